//! egret-telemetry
