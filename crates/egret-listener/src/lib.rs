//! egret-listener
