//! Parsers for what runs collect from hosts and guests after (or during) a test: VPP CLI
//! output and Linux counters. Pure functions over text, so they are tested against captured
//! output and stay independent of how the text was fetched (SSH, guest agent, a file).

pub mod snmp6;
pub mod vpp_errors;
