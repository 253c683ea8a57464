//! Kubernetes name syntax, as `k8s.io/apimachinery/pkg/util/validation` checks it:
//! qualified names (label keys), label values, DNS-1123 labels and subdomains (object
//! and namespace names), DNS-1035 labels (Service names) and IANA service names (named
//! ports). Each check returns the API server's wording of what is wrong, or `None` when
//! the value is valid.

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`: the name part of a qualified name,
/// and a non-empty label value.
fn is_qualified_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn is_dns1123_label_syntax(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            (first.is_ascii_lowercase() || first.is_ascii_digit())
                && (last.is_ascii_lowercase() || last.is_ascii_digit())
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        }
        _ => false,
    }
}

/// A DNS-1123 label (namespace names): at most 63 characters.
pub fn dns1123_label(s: &str) -> Option<String> {
    if s.len() > 63 {
        return Some(format!("{s:?}: must be no more than 63 characters"));
    }
    if !is_dns1123_label_syntax(s) {
        return Some(format!(
            "{s:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
             and must start and end with an alphanumeric character"
        ));
    }
    None
}

/// A DNS-1035 label (Service names): a DNS-1123 label that starts with a letter.
pub fn dns1035_label(s: &str) -> Option<String> {
    if s.len() > 63 {
        return Some(format!("{s:?}: must be no more than 63 characters"));
    }
    if !is_dns1123_label_syntax(s) || !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Some(format!(
            "{s:?}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', \
             start with an alphabetic character, and end with an alphanumeric character"
        ));
    }
    None
}

/// A DNS-1123 subdomain (pod and policy names, label key prefixes): at most 253
/// characters, dot-separated labels.
pub fn dns1123_subdomain(s: &str) -> Option<String> {
    if s.len() > 253 {
        return Some(format!("{s:?}: must be no more than 253 characters"));
    }
    if !s.split('.').all(is_dns1123_label_syntax) {
        return Some(format!(
            "{s:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character"
        ));
    }
    None
}

/// A qualified name (label keys, selector keys): `[prefix/]name`, the prefix a DNS-1123
/// subdomain, the name at most 63 characters of `[A-Za-z0-9][-A-Za-z0-9_.]*[A-Za-z0-9]`.
pub fn qualified_name(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                return Some(format!("{s:?}: prefix part must be non-empty"));
            }
            if let Some(problem) = dns1123_subdomain(prefix) {
                return Some(format!("{s:?}: prefix part {problem}"));
            }
            *name
        }
        _ => {
            return Some(format!(
                "{s:?}: a qualified name must consist of alphanumeric characters, '-', '_' or '.', \
                 and must start and end with an alphanumeric character, with an optional DNS subdomain \
                 prefix and '/' (e.g. 'example.com/MyName')"
            ));
        }
    };
    if name.is_empty() {
        return Some(format!("{s:?}: name part must be non-empty"));
    }
    if name.len() > 63 {
        return Some(format!(
            "{s:?}: name part must be no more than 63 characters"
        ));
    }
    if !is_qualified_name_part(name) {
        return Some(format!(
            "{s:?}: name part must consist of alphanumeric characters, '-', '_' or '.', \
             and must start and end with an alphanumeric character"
        ));
    }
    None
}

/// A label value: empty, or at most 63 characters of `[A-Za-z0-9][-A-Za-z0-9_.]*[A-Za-z0-9]`.
pub fn label_value(s: &str) -> Option<String> {
    if s.len() > 63 {
        return Some(format!("{s:?}: must be no more than 63 characters"));
    }
    if !s.is_empty() && !is_qualified_name_part(s) {
        return Some(format!(
            "{s:?}: a valid label value must be an empty string or consist of alphanumeric characters, \
             '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    None
}

/// An IANA service name (a named port): at most 15 characters of `[-a-z0-9]`, at
/// least one letter, no leading, trailing or consecutive hyphens.
pub fn iana_svc_name(s: &str) -> Option<String> {
    if s.len() > 15 {
        return Some(format!("{s:?}: must be no more than 15 characters"));
    }
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some(format!(
            "{s:?}: must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
        ));
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Some(format!("{s:?}: must contain at least one letter (a-z)"));
    }
    if s.contains("--") {
        return Some(format!("{s:?}: must not contain consecutive hyphens"));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some(format!("{s:?}: must not begin or end with a hyphen"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names() {
        for ok in [
            "app",
            "app.kubernetes.io/name",
            "a",
            "A_b.c-D",
            "k8s.io/x",
            &"a".repeat(63),
        ] {
            assert_eq!(qualified_name(ok), None, "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a b",
            "/a",
            "a/",
            "a/b/c",
            "Ex.com/a",
            &"a".repeat(64),
            "a/_x",
        ] {
            assert!(qualified_name(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn label_values() {
        for ok in ["", "v1", "a.b_c-d", &"z".repeat(63)] {
            assert_eq!(label_value(ok), None, "{ok}");
        }
        for bad in ["-v", "v-", "a b", "a/b", &"z".repeat(64)] {
            assert!(label_value(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn svc_names() {
        for ok in ["http", "h2c", "web-80", "a", "abcdefghijklmno"] {
            assert_eq!(iana_svc_name(ok), None, "{ok}");
        }
        for bad in [
            "",
            "HTTP",
            "80",
            "a--b",
            "-http",
            "http-",
            "abcdefghijklmnop",
            "a_b",
        ] {
            assert!(iana_svc_name(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn dns_names() {
        assert_eq!(dns1123_label("prod-1"), None);
        assert!(dns1123_label("Prod").is_some());
        assert!(dns1123_label("a.b").is_some());
        assert_eq!(dns1123_subdomain("a.b-c"), None);
        assert!(dns1123_subdomain("a..b").is_some());
        assert_eq!(dns1035_label("web-1"), None);
        assert!(dns1035_label("1web").is_some());
        assert!(dns1035_label("Web").is_some());
        assert!(dns1035_label("web-").is_some());
        assert!(dns1035_label(&format!("a{}", "b".repeat(63))).is_some());
    }
}
