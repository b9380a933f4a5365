//! Diagnostics: every warning and error names the file, the line, the resource and the field.

use std::fmt;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One finding about the configuration.
///
/// Displayed as `{file}:{line}: {Kind} {ns}/{name}: {field}: {message}`; the resource and the
/// field are left out when unknown (a YAML syntax error has neither), and the line when it is
/// 0 (a file that could not be read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based; 0 when unknown.
    pub line: u32,
    /// `Kind namespace/name`, e.g. `VirtualService istio-system/direct-cnn-through-egress-gateway`.
    pub resource: Option<String>,
    /// Field path inside the resource, e.g. `spec.http[0].retries`.
    pub field: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        f.write_str(": ")?;
        if let Some(r) = &self.resource {
            write!(f, "{r}: ")?;
        }
        if let Some(field) = &self.field {
            if !field.is_empty() {
                write!(f, "{field}: ")?;
            }
        }
        f.write_str(&self.message)
    }
}

/// The kinds of resource Egret compiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ServiceEntry,
    Gateway,
    VirtualService,
    DestinationRule,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "ServiceEntry" => Kind::ServiceEntry,
            "Gateway" => Kind::Gateway,
            "VirtualService" => Kind::VirtualService,
            "DestinationRule" => Kind::DestinationRule,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Gateway => "Gateway",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_format() {
        let d = Diagnostic {
            severity: Severity::Warning,
            file: PathBuf::from("config/vs.yaml"),
            line: 12,
            resource: Some("VirtualService istio-system/vs".into()),
            field: Some("spec.http[0].retries".into()),
            message: "retries are not supported yet; ignored".into(),
        };
        assert_eq!(
            d.to_string(),
            "config/vs.yaml:12: VirtualService istio-system/vs: spec.http[0].retries: retries are not supported yet; ignored"
        );
        let d = Diagnostic {
            resource: None,
            field: None,
            line: 0,
            message: "cannot read".into(),
            ..d
        };
        assert_eq!(d.to_string(), "config/vs.yaml: cannot read");
    }
}
