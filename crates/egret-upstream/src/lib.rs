//! egret-upstream
