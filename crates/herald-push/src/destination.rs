//! The SSRF guard: which addresses a webhook may be sent to. The URL is checked when a
//! subscription is created, and every address a name resolves to is checked again when the
//! connection is made (a name can resolve to another address later, DNS rebinding).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a destination is refused.
pub fn private_reason(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => private_v4(v4),
            None => private_v6(v6),
        },
    }
}

/// The IPv4 address inside an IPv6 one that reaches it: mapped (`::ffff:a.b.c.d`), compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`) and 6to4 (`2002:AABB:CCDD::/16`).
fn embedded_v4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    let segments = address.segments();
    let octets = address.octets();
    let last_four = Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]);
    if let Some(v4) = address.to_ipv4_mapped() {
        return Some(v4);
    }
    if segments[..6] == [0, 0, 0, 0, 0, 0] && !address.is_loopback() && !address.is_unspecified() {
        return Some(last_four);
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || segments[..3] == [0x64, 0xff9b, 1] {
        return Some(last_four);
    }
    if segments[0] == 0x2002 {
        return Some(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5]));
    }
    None
}

fn private_v4(address: Ipv4Addr) -> Option<&'static str> {
    let [first, second, ..] = address.octets();
    if address.is_loopback() {
        Some("loopback")
    } else if address.is_private() {
        Some("private")
    } else if address.is_link_local() {
        Some("link-local")
    } else if address.is_multicast() {
        Some("multicast")
    } else if address.is_unspecified() || first == 0 {
        Some("unspecified (\"this network\")")
    } else if address.is_broadcast() {
        Some("broadcast")
    } else if first == 100 && (64..128).contains(&second) {
        Some("shared (carrier-grade NAT)")
    } else if first == 192 && second == 0 && address.octets()[2] == 0 {
        Some("IETF protocol assignment")
    } else if first == 198 && (18..20).contains(&second) {
        Some("benchmarking")
    } else if first >= 240 {
        Some("reserved")
    } else {
        None
    }
}

fn private_v6(address: Ipv6Addr) -> Option<&'static str> {
    if address.is_loopback() {
        Some("loopback")
    } else if address.is_unspecified() {
        Some("unspecified")
    } else if address.is_unique_local() {
        Some("private (unique local)")
    } else if address.is_unicast_link_local() {
        Some("link-local")
    } else if address.segments()[0] & 0xffc0 == 0xfec0 {
        Some("site-local")
    } else if address.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}

/// Checks a webhook URL's form (http or https, a host, no credentials) and, when its host is an
/// address, the address.
pub fn check_url(text: &str, allow_private_networks: bool) -> Result<Url, String> {
    let url =
        Url::parse(text).map_err(|error| format!("push.url {text:?} is not a URL: {error}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "push.url must be http:// or https://, not {}://",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "push.url must not carry credentials; the endpoint verifies the webhook-signature instead"
                .into(),
        );
    }
    match url.host() {
        None => return Err(format!("push.url {text:?} has no host")),
        Some(url::Host::Ipv4(v4)) => check_address(IpAddr::V4(v4), allow_private_networks)?,
        Some(url::Host::Ipv6(v6)) => check_address(IpAddr::V6(v6), allow_private_networks)?,
        Some(url::Host::Domain(_)) => {}
    }
    Ok(url)
}

/// Refuses an address in a private range unless private networks are allowed.
pub fn check_address(address: IpAddr, allow_private_networks: bool) -> Result<(), String> {
    match private_reason(address) {
        Some(kind) if !allow_private_networks => Err(format!(
            "the destination {address} is a {kind} address; webhooks to private networks are refused unless the server sets push.allow_private_networks = true"
        )),
        _ => Ok(()),
    }
}

/// A resolver for the webhook client that drops private addresses (unless allowed), so the
/// check holds for the address actually connected to.
#[derive(Debug, Clone)]
pub(crate) struct GuardedResolver {
    pub(crate) allow_private_networks: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private_networks = self.allow_private_networks;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(
                    |address| match check_address(address.ip(), allow_private_networks) {
                        Ok(()) => true,
                        Err(reason) => {
                            refused = Some(reason);
                            false
                        }
                    },
                )
                .collect();
            if allowed.is_empty() {
                let reason = refused.unwrap_or_else(|| format!("{host} resolved to no address"));
                return Err(format!("{host}: {reason}").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

pub(crate) fn resolver(allow_private_networks: bool) -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver {
        allow_private_networks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges_are_recognised() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "224.0.0.1",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.0.0.8",
            "64:ff9b::a00:8",
            "64:ff9b::127.0.0.1",
            "64:ff9b:1::a00:8",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "fec0::1",
            "192.0.0.8",
            "198.18.0.1",
            "240.0.0.1",
        ] {
            let address: IpAddr = private.parse().unwrap();
            assert!(
                private_reason(address).is_some(),
                "{private} counts as private"
            );
        }
        for public in [
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
            "192.0.2.1",
        ] {
            let address: IpAddr = public.parse().unwrap();
            assert_eq!(private_reason(address), None, "{public} is public");
        }
    }

    #[test]
    fn urls_are_checked_for_form_and_literal_addresses() {
        assert!(check_url("https://example.com/hook", false).is_ok());
        assert!(check_url("ftp://example.com/", true).is_err());
        assert!(check_url("not a url", true).is_err());
        assert!(check_url("https://user:pass@example.com/", true).is_err());
        let refused = check_url("http://169.254.169.254/latest/meta-data", false).unwrap_err();
        assert!(refused.contains("link-local"), "{refused}");
        assert!(check_url("http://[::1]:8080/", false).is_err());
        assert!(check_url("http://127.0.0.1:8080/", true).is_ok());
        // The URL parser turns other spellings of an address into the address.
        for spelled in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://017700000001/",
            "http://127.1/",
            "http://[::ffff:7f00:1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
        ] {
            assert!(check_url(spelled, false).is_err(), "{spelled}");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_that_resolve_to_private_addresses() {
        let refused = resolver(false)
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost resolves to loopback only");
        assert!(refused.to_string().contains("loopback"), "{refused}");
        let allowed = resolver(true)
            .resolve("localhost".parse().unwrap())
            .await
            .expect("allowed when private networks are");
        assert!(allowed.count() > 0);
    }
}
