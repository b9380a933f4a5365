//! egret-test-support
