//! egret-sni
