//! The caller's deadline, from the `grpc-timeout` header a client sends with a deadline.

use std::time::{Duration, Instant};

/// When the call must be finished by, if the client set a deadline. `grpc-timeout` is up to
/// eight digits and a unit: H(ours) M(inutes) S(econds) m(illis) u(micros) n(anos).
pub fn from_metadata(metadata: &tonic::metadata::MetadataMap) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_ignores_garbage() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert!(from_metadata(&md).is_none());
        md.insert("grpc-timeout", "1500m".parse().unwrap());
        let d = from_metadata(&md).unwrap();
        let left = d.saturating_duration_since(Instant::now());
        assert!(left > Duration::from_millis(1000) && left <= Duration::from_millis(1500));
        md.insert("grpc-timeout", "5X".parse().unwrap());
        assert!(from_metadata(&md).is_none());
        md.insert("grpc-timeout", "S".parse().unwrap());
        assert!(from_metadata(&md).is_none());
    }
}
