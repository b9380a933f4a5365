//! Scenario S2 lives here (TLS passthrough by SNI).
