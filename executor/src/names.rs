//! Validation of names that become file names or XML content.

use crate::error::{ExecError, Result};

/// Longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// Accepts a domain, snapshot or checkpoint name that is safe as a file
/// name: 1–200 bytes of `[A-Za-z0-9._+:@-]`, not starting with `.` or `-`.
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    let bad = |why: &str| Err(ExecError::Invalid(format!("invalid {kind} name {name:?}: {why}")));
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad(&format!("it is longer than {MAX_NAME_LEN} bytes"));
    }
    if name.contains('\0') {
        return bad("it contains a NUL byte");
    }
    if name.contains('/') {
        return bad("it contains '/', which would escape its directory");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("it starts with '.' or '-'");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._+:@-".contains(*c)))
    {
        return bad(&format!(
            "character {c:?} is not allowed (use letters, digits and ._+:@-)"
        ));
    }
    Ok(())
}

/// Accepts an image path: absolute, no NUL, no `..` component.
pub fn validate_image_path(what: &str, path: &str) -> Result<()> {
    let bad = |why: &str| Err(ExecError::Invalid(format!("invalid {what} {path:?}: {why}")));
    if path.contains('\0') {
        return bad("it contains a NUL byte");
    }
    if !path.starts_with('/') {
        return bad("it is not an absolute path");
    }
    if path.split('/').any(|c| c == "..") {
        return bad("it contains a '..' component");
    }
    if path.len() > 4000 {
        return bad("it is too long");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["s1", "snap.2024-01-01", "a+b:c@d_e"] {
            validate_name("snapshot", ok).unwrap();
        }
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            "a\0b",
            ".hidden",
            "-rf",
            "a b",
            "é",
            &"x".repeat(201),
        ] {
            let e = validate_name("snapshot", bad).unwrap_err().to_string();
            assert!(e.contains("invalid snapshot name"), "{e}");
            assert!(e.contains("nothing was changed"), "{e}");
        }
    }

    #[test]
    fn paths() {
        validate_image_path("overlay", "/var/lib/x/vda.s1").unwrap();
        for bad in ["rel/path", "/a/../b", "/a\0b"] {
            assert!(validate_image_path("overlay", bad).is_err());
        }
    }
}
