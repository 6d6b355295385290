//! Security groups to nftables (built under the security-group issue).
