//! egret binary library
