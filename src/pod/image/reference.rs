//! Image references: Docker's name grammar and defaults (`busybox` ==
//! `docker.io/library/busybox:latest`).

use super::ImageError;

/// Canonical form of an image reference: `domain/path:tag`, with Docker's defaults
/// (`docker.io`, `library/`, `latest`).
pub fn normalize_name(name: &str) -> Result<String, ImageError> {
    let invalid = |reason| ImageError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.contains('@') {
        return Err(invalid("digest references are not supported; use NAME:TAG"));
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], &name[last_slash + i + 1..]),
        None => (name, "latest"),
    };
    if name.len() > 255 {
        return Err(invalid("longer than 255 characters"));
    }
    let tag_ok = tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !tag_ok {
        return Err(invalid(
            "tag must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
        ));
    }
    let (domain, path) = match repo.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            if !is_registry_domain(first) {
                return Err(invalid(
                    "registry must be a host name of [A-Za-z0-9-] labels, with an optional :port",
                ));
            }
            (first.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), repo.to_string()),
    };
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    if !path.split('/').all(is_path_component) {
        return Err(invalid(
            "repository must be components of lowercase alphanumerics joined by '.', '_', '__' \
             or '-' runs, separated by '/'",
        ));
    }
    Ok(format!("{domain}/{path}:{tag}"))
}

/// A repository path component of the distribution reference grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` (so never `.`, `..` or empty).
fn is_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut run: Vec<u8> = Vec::new();
    for &b in bytes {
        if alnum(b) {
            let ok = run.is_empty()
                || run == b"."
                || run == b"_"
                || run == b"__"
                || run.iter().all(|&r| r == b'-');
            if !ok {
                return false;
            }
            run.clear();
        } else if matches!(b, b'.' | b'_' | b'-') {
            run.push(b);
        } else {
            return false;
        }
    }
    true
}

/// A registry host of the reference grammar: DNS-style labels of `[A-Za-z0-9-]` (not starting
/// or ending with `-`), separated by `.`, with an optional numeric `:port`.
fn is_registry_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    port_ok && host.split('.').all(label_ok)
}

/// Short form of a canonical name for display (`docker.io/library/busybox:latest` → `busybox:latest`).
pub fn familiar_name(canonical: &str) -> &str {
    canonical
        .strip_prefix("docker.io/library/")
        .or_else(|| canonical.strip_prefix("docker.io/"))
        .unwrap_or(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalize_like_docker() {
        let canonical = "docker.io/library/busybox:latest";
        for n in [
            "busybox",
            "busybox:latest",
            "docker.io/library/busybox:latest",
            "docker.io/busybox",
        ] {
            assert_eq!(normalize_name(n).ok().as_deref(), Some(canonical), "{n}");
        }
        assert_eq!(
            normalize_name("localhost:5000/app").ok().as_deref(),
            Some("localhost:5000/app:latest")
        );
        assert_eq!(
            normalize_name("quay.io/org/app:v1.2").ok().as_deref(),
            Some("quay.io/org/app:v1.2")
        );
        assert_eq!(
            normalize_name("me/app:1").ok().as_deref(),
            Some("docker.io/me/app:1")
        );
        assert!(normalize_name("Busybox").is_err());
        for bad in [
            "a/../..:1",
            "a/..",
            "./a",
            "a//b",
            "a/.b",
            "a-/b",
            "a..b",
            "a___b",
            "quay..io/a",
            "localhost:x/a",
            "busybox:.1",
            "busybox:-1",
        ] {
            let e = normalize_name(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("image name {bad:?}: ")), "{e}");
        }
        for good in [
            "a.b/c",
            "a__b",
            "a---b",
            "my-registry.example:5000/team/app:v1_2.3",
        ] {
            assert!(normalize_name(good).is_ok(), "{good}");
        }
        assert!(normalize_name("busybox:").is_err());
        assert!(normalize_name("busybox@sha256:00").is_err());
        assert_eq!(familiar_name(canonical), "busybox:latest");
        assert_eq!(familiar_name("quay.io/org/app:v1"), "quay.io/org/app:v1");
    }
}
