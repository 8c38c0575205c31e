//! Validation of names that become file names or XML content.

use crate::error::{ExecError, Result};

/// Longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// How a name is shown in an error: whole when short, else its first 60
/// characters and its length (a 100,000-character name is not echoed).
pub fn shown(name: &str) -> String {
    if name.chars().count() <= 64 {
        format!("{name:?}")
    } else {
        let head: String = name.chars().take(60).collect();
        format!("{head:?}… ({} bytes)", name.len())
    }
}

/// Accepts a domain, snapshot or checkpoint name that is safe as a file
/// name: 1–200 bytes of `[A-Za-z0-9._+:@-]` and spaces (libvirt's own
/// tests name snapshots "my snap name"), not starting with `.` or `-`, not
/// starting or ending with a space.
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(ExecError::refused(format!(
            "invalid {kind} name {}: {why}",
            shown(name)
        )))
    };
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
    if name.starts_with(' ') || name.ends_with(' ') {
        return bad("it starts or ends with a space");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._+:@- ".contains(*c)))
    {
        return bad(&format!(
            "character {c:?} is not allowed (use letters, digits, spaces and ._+:@-)"
        ));
    }
    Ok(())
}

/// Accepts an image path: absolute, no NUL, no `..` component.
pub fn validate_image_path(what: &str, path: &str) -> Result<()> {
    let bad = |why: &str| Err(ExecError::refused(format!("invalid {what} {path:?}: {why}")));
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
        for ok in ["s1", "snap.2024-01-01", "a+b:c@d_e", "my snap name"] {
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
            " a",
            "a ",
            "a\tb",
            "é",
            &"x".repeat(201),
        ] {
            let e = validate_name("snapshot", bad).unwrap_err().to_string();
            assert!(e.contains("invalid snapshot name"), "{e}");
            assert!(e.contains("nothing was changed"), "{e}");
        }
        let long = "y".repeat(100_000);
        let e = validate_name("snapshot", &long).unwrap_err().to_string();
        assert!(e.len() < 400 && e.contains("100000 bytes"), "{e}");
    }

    #[test]
    fn paths() {
        validate_image_path("overlay", "/var/lib/x/vda.s1").unwrap();
        for bad in ["rel/path", "/a/../b", "/a\0b"] {
            assert!(validate_image_path("overlay", bad).is_err());
        }
    }
}
