//! The BGP speaker library for a hypervisor (built under the BGP issue).
