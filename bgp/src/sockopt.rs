//! The two socket options no safe crate exposes: TCP MD5 signatures (RFC 2385, `TCP_MD5SIG`)
//! and the minimum accepted TTL / hop limit for GTSM (RFC 5082, `IP_MINTTL`,
//! `IPV6_MINHOPCOUNT`). This is the crate's only unsafe code: two `setsockopt` calls on a
//! socket we own, with values built here.
#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use socket2::{SockAddr, Socket};

/// Longest key the kernel takes (`TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_KEY_LEN: usize = 80;

/// `struct tcp_md5sig` from `<linux/tcp.h>` (libc has the constant, not the struct).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: i32,
    key: [u8; MAX_KEY_LEN],
}

/// Sets (or with an empty key, removes) the MD5 key for segments to and from `peer`. On a
/// listening socket it applies to connections accepted from `peer`.
pub fn set_md5_key(socket: &Socket, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TCP MD5 key longer than {MAX_KEY_LEN} bytes"),
        ));
    }
    let sockaddr = SockAddr::from(SocketAddr::new(peer, 0));
    // SAFETY: sockaddr_storage is plain old data for which all-zero bytes are valid.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = (sockaddr.len() as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: `sockaddr.as_ptr()` points to `sockaddr.len()` initialised bytes and `addr` is
    // at least as large (`len` is clamped to its size); the two do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sockaddr.as_ptr().cast::<u8>(),
            (&raw mut addr).cast::<u8>(),
            len,
        );
    }
    let mut sig = TcpMd5Sig {
        addr,
        flags: 0,
        prefixlen: 0,
        keylen: key.len() as u16,
        ifindex: 0,
        key: [0; MAX_KEY_LEN],
    };
    sig.key[..key.len()].copy_from_slice(key);
    setsockopt(socket, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &sig)
}

/// GTSM: drop packets from the peer whose TTL (hop limit) is below `min`.
pub fn set_min_ttl(socket: &Socket, v6: bool, min: u8) -> io::Result<()> {
    let value = libc::c_int::from(min);
    if v6 {
        setsockopt(socket, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, &value)
    } else {
        setsockopt(socket, libc::IPPROTO_IP, libc::IP_MINTTL, &value)
    }
}

fn setsockopt<T>(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<T>())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "option too large"))?;
    // SAFETY: the fd is open for the lifetime of `socket`; `value` points to `len` readable
    // bytes of a #[repr(C)] (or primitive) value the kernel only reads.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (value as *const T).cast::<libc::c_void>(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Type};

    #[test]
    fn md5_keys_and_min_ttl_are_accepted_by_the_kernel() {
        for (domain, peer, v6) in [
            (Domain::IPV4, "192.0.2.1".parse().unwrap(), false),
            (Domain::IPV6, "2001:db8::1".parse().unwrap(), true),
        ] {
            let s = Socket::new(domain, Type::STREAM, None).unwrap();
            set_md5_key(&s, peer, b"secret").unwrap();
            set_md5_key(&s, peer, b"").unwrap();
            set_min_ttl(&s, v6, 255).unwrap();
        }
    }

    #[test]
    fn over_long_keys_are_refused() {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        assert!(set_md5_key(&s, "192.0.2.1".parse().unwrap(), &[b'k'; 81]).is_err());
    }
}
