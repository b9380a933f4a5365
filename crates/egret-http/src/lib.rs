//! egret-http
