//! Finding a PROXY header at the start of a connection's bytes, without I/O.
//!
//! This module frames the header (where it ends, whether it is within the spec's sizes
//! and the configured cap) so that partial input is never mistaken for a bad header;
//! [`ppp`] parses the complete header.

use std::net::SocketAddr;

use ppp::{v1, v2};

use super::ProxyProtocolError;

/// What every version 1 header starts with: `PROXY` and one space.
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The longest version 1 header, CRLF included.
pub(super) const V1_MAX_LEN: usize = 107;
/// What every version 2 header starts with.
const V2_SIGNATURE: &[u8] = v2::PROTOCOL_PREFIX;
/// The signature, the version and command, the family and protocol, and the length.
const V2_FIXED_LEN: usize = 16;

/// What the first bytes of a connection are.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scan {
    /// Not a PROXY header: protocol data.
    NotHeader,
    /// No byte yet, or the start of a signature: more bytes tell.
    MaybeSignature,
    /// A signature and part of its header, whose full length is `len` once known.
    Incomplete { len: Option<usize> },
    /// A whole header.
    Complete(Header),
}

/// A complete header.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Header {
    /// Its length in bytes: the protocol's bytes start right after.
    pub(super) len: usize,
    /// The client and the address it connected to, or `None` for a header that carries
    /// none to use (`LOCAL`, `UNKNOWN`, UNIX or unspecified families, UDP).
    pub(super) addresses: Option<Addresses>,
}

/// The connection as the client made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Addresses {
    pub(super) source: SocketAddr,
    pub(super) destination: SocketAddr,
}

/// Looks at the bytes received so far. Version 2 headers whose payload is longer than
/// `max_v2_len` are refused from their fixed part, before the rest is read.
pub(super) fn scan(bytes: &[u8], max_v2_len: usize) -> Result<Scan, ProxyProtocolError> {
    if bytes.starts_with(V2_SIGNATURE) {
        scan_v2(bytes, max_v2_len)
    } else if bytes.starts_with(V1_SIGNATURE) {
        scan_v1(bytes)
    } else if V2_SIGNATURE.starts_with(bytes) || V1_SIGNATURE.starts_with(bytes) {
        Ok(Scan::MaybeSignature)
    } else {
        Ok(Scan::NotHeader)
    }
}

/// A version 1 header is one line of at most 107 bytes ending in CRLF. It is parsed only
/// once its line is complete: a prefix of a valid line is not always valid.
fn scan_v1(bytes: &[u8]) -> Result<Scan, ProxyProtocolError> {
    // The CR of the longest line is its 106th byte.
    let searched = &bytes[..bytes.len().min(V1_MAX_LEN - 1)];
    let Some(end) = searched.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if searched.len() == V1_MAX_LEN - 1 {
            Err(ProxyProtocolError::TooLong {
                version: 1,
                max: V1_MAX_LEN,
            })
        } else {
            Ok(Scan::Incomplete { len: None })
        };
    };
    if bytes[end] == b'\n' {
        return Err(malformed(1, "the line ends in LF without CR"));
    }
    if end + 1 == bytes.len() {
        // The LF is still on its way.
        return Ok(Scan::Incomplete { len: None });
    }
    let line = &bytes[..end + 2];
    let header = v1::Header::try_from(line).map_err(|error| malformed(1, error))?;
    let addresses = match header.addresses {
        v1::Addresses::Tcp4(ip) => Some(Addresses {
            source: (ip.source_address, ip.source_port).into(),
            destination: (ip.destination_address, ip.destination_port).into(),
        }),
        v1::Addresses::Tcp6(ip) => Some(Addresses {
            source: (ip.source_address, ip.source_port).into(),
            destination: (ip.destination_address, ip.destination_port).into(),
        }),
        v1::Addresses::Unknown => None,
    };
    Ok(Scan::Complete(Header {
        len: line.len(),
        addresses,
    }))
}

/// A version 2 header is 16 bytes and the payload length they give.
fn scan_v2(bytes: &[u8], max_v2_len: usize) -> Result<Scan, ProxyProtocolError> {
    if bytes.len() < V2_FIXED_LEN {
        return Ok(Scan::Incomplete { len: None });
    }
    let version_command = bytes[V2_SIGNATURE.len()];
    let version = version_command >> 4;
    if version != 2 {
        return Err(ProxyProtocolError::UnsupportedVersion(version));
    }
    let payload = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if payload > max_v2_len {
        return Err(ProxyProtocolError::TooLong {
            version: 2,
            max: max_v2_len,
        });
    }
    let len = V2_FIXED_LEN + payload;
    if bytes.len() < len {
        return Ok(Scan::Incomplete { len: Some(len) });
    }
    // LOCAL: the balancer's own connection (a health check); the spec has the receiver
    // ignore the family and addresses, as HAProxy does.
    if version_command & 0x0F == 0 {
        return Ok(Scan::Complete(Header {
            len,
            addresses: None,
        }));
    }
    // TLVs are not parsed: the length skips them.
    let header = v2::Header::try_from(&bytes[..len]).map_err(|error| malformed(2, error))?;
    let addresses = match (header.protocol, header.addresses) {
        (v2::Protocol::Stream, v2::Addresses::IPv4(ip)) => Some(Addresses {
            source: (ip.source_address, ip.source_port).into(),
            destination: (ip.destination_address, ip.destination_port).into(),
        }),
        (v2::Protocol::Stream, v2::Addresses::IPv6(ip)) => Some(Addresses {
            source: (ip.source_address, ip.source_port).into(),
            destination: (ip.destination_address, ip.destination_port).into(),
        }),
        // UDP, UNIX sockets, unspecified: no TCP client to take; HAProxy keeps the
        // connection's own addresses too.
        _ => None,
    };
    Ok(Scan::Complete(Header { len, addresses }))
}

fn malformed(version: u8, reason: impl ToString) -> ProxyProtocolError {
    ProxyProtocolError::Malformed {
        version,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: usize = 4096;

    fn complete(bytes: &[u8]) -> Header {
        match scan(bytes, CAP) {
            Ok(Scan::Complete(header)) => header,
            other => panic!("expected a complete header, got {other:?}"),
        }
    }

    fn addresses(source: &str, destination: &str) -> Option<Addresses> {
        Some(Addresses {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        })
    }

    fn v2(version_command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.extend([version_command, family]);
        bytes.extend(u16::try_from(payload.len()).unwrap().to_be_bytes());
        bytes.extend(payload);
        bytes
    }

    #[test]
    fn a_v1_line_ends_at_its_crlf() {
        let bytes = b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 443\r\nGET /";
        let header = complete(bytes);
        assert_eq!(header.len, bytes.len() - 5);
        assert_eq!(
            header.addresses,
            addresses("192.0.2.1:40000", "198.51.100.2:443")
        );
        let header = complete(b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n");
        assert_eq!(header.addresses, addresses("[2001:db8::1]:1", "[::1]:2"));
        let header = complete(b"PROXY UNKNOWN whatever\r\n");
        assert_eq!(header.addresses, None);
    }

    #[test]
    fn every_prefix_of_a_valid_header_asks_for_more() {
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 443\r\n".to_vec();
        let v2 = v2(
            0x21,
            0x11,
            &[192, 0, 2, 1, 198, 51, 100, 2, 0x9c, 0x40, 1, 187],
        );
        for header in [v1, v2] {
            for end in 0..header.len() {
                let scanned = scan(&header[..end], CAP).unwrap();
                assert!(
                    matches!(scanned, Scan::MaybeSignature | Scan::Incomplete { .. }),
                    "{end}: {scanned:?}"
                );
            }
            assert_eq!(complete(&header).len, header.len());
        }
    }

    #[test]
    fn other_bytes_are_not_a_header_as_soon_as_they_differ() {
        assert_eq!(scan(b"G", CAP).unwrap(), Scan::NotHeader);
        assert_eq!(scan(b"PROXz", CAP).unwrap(), Scan::NotHeader);
        assert_eq!(scan(b"PROXYTCP4", CAP).unwrap(), Scan::NotHeader);
        assert_eq!(scan(b"\r\n\r\nX", CAP).unwrap(), Scan::NotHeader);
        assert_eq!(scan(b"", CAP).unwrap(), Scan::MaybeSignature);
        assert_eq!(scan(b"PROX", CAP).unwrap(), Scan::MaybeSignature);
    }

    #[test]
    fn a_v1_line_is_at_most_107_bytes() {
        let longest = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX_LEN - 16));
        assert_eq!(longest.len(), V1_MAX_LEN);
        assert_eq!(complete(longest.as_bytes()).len, V1_MAX_LEN);

        let too_long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX_LEN - 15));
        assert!(matches!(
            scan(too_long.as_bytes(), CAP),
            Err(ProxyProtocolError::TooLong {
                version: 1,
                max: 107
            })
        ));
        // Known as soon as the 106th byte is not the CR.
        assert!(scan(&too_long.as_bytes()[..106], CAP).is_err());
        assert!(scan(&too_long.as_bytes()[..105], CAP).is_ok());
    }

    #[test]
    fn a_v1_line_must_end_in_crlf_and_hold_valid_fields() {
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 443\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 443\rX",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 \r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            b"PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 65536\r\n",
            b"PROXY \r\n",
        ] {
            assert!(
                matches!(
                    scan(bad, CAP),
                    Err(ProxyProtocolError::Malformed { version: 1, .. })
                ),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn v2_tlvs_are_skipped_by_length() {
        let mut payload = vec![0; 36];
        payload[15] = 1; // ::1
        payload[31] = 2; // ::2
        payload[32..].copy_from_slice(&[0, 80, 1, 187]);
        payload.extend([0x04, 0, 3, b'a', b'b', b'c']); // a NOOP TLV
        let header = complete(&[v2(0x21, 0x21, &payload), b"data".to_vec()].concat());
        assert_eq!(header.len, 16 + 42);
        assert_eq!(header.addresses, addresses("[::1]:80", "[::2]:443"));
    }

    #[test]
    fn v2_local_unix_udp_and_unspecified_keep_the_socket_addresses() {
        let ipv4 = [192, 0, 2, 1, 198, 51, 100, 2, 0, 1, 0, 2];
        for (version_command, family, payload) in [
            (0x20, 0x11, &ipv4[..]),
            (0x20, 0xFF, &[][..]), // LOCAL ignores the family
            (0x21, 0x00, &[][..]),
            (0x21, 0x12, &ipv4[..]),
            (0x21, 0x31, &[0; 216][..]),
        ] {
            let header = complete(&v2(version_command, family, payload));
            assert_eq!(header.addresses, None, "{version_command:#x} {family:#x}");
        }
    }

    #[test]
    fn v2_lengths_versions_and_fields_are_checked() {
        assert!(matches!(
            scan(&v2(0x11, 0x11, &[0; 12]), CAP),
            Err(ProxyProtocolError::UnsupportedVersion(1))
        ));
        // Refused from the fixed part alone.
        let long = v2(0x21, 0x11, &[0; 100]);
        assert!(matches!(
            scan(&long[..16], 99),
            Err(ProxyProtocolError::TooLong {
                version: 2,
                max: 99
            })
        ));
        assert_eq!(
            scan(&long[..16], 100).unwrap(),
            Scan::Incomplete { len: Some(116) }
        );
        for (version_command, family, payload) in [
            (0x21, 0x11, &[0; 11][..]), // shorter than IPv4 addresses
            (0x22, 0x11, &[0; 12][..]), // no such command
            (0x21, 0x41, &[0; 12][..]), // no such family
            (0x21, 0x13, &[0; 12][..]), // no such protocol
        ] {
            assert!(
                matches!(
                    scan(&v2(version_command, family, payload), CAP),
                    Err(ProxyProtocolError::Malformed { version: 2, .. })
                ),
                "{version_command:#x} {family:#x}"
            );
        }
    }
}
