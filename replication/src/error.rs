//! The one error type of the geography crate.

/// Everything that can go wrong reading a topology or planning placement. Every
/// variant names the offending item so an operator can fix the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The text is not valid TOML or JSON, or does not have the topology's shape
    /// (missing or unknown fields, wrong types).
    #[error("topology is not valid {format}: {message}")]
    Parse {
        /// `"TOML"` or `"JSON"`.
        format: &'static str,
        /// The parser's message, with its location.
        message: String,
    },
    /// A region name or code used somewhere is not one of the topology's regions.
    #[error("unknown region {region} in {context}")]
    UnknownRegion {
        /// The name or code as written.
        region: String,
        /// Where it was used.
        context: String,
    },
    /// Two regions have no round-trip time between them.
    #[error("rtt_ms has no entry for the pair \"{a}:{b}\"")]
    MissingRtt {
        /// First region name.
        a: String,
        /// Second region name.
        b: String,
    },
    /// The same unordered pair appears twice in `rtt_ms` (for example as `a:b` and `b:a`).
    #[error("rtt_ms gives the pair \"{pair}\" twice")]
    DuplicateRtt {
        /// The pair as written the second time.
        pair: String,
    },
    /// Two regions share a code.
    #[error("region code {code} is used by both {first} and {second}")]
    DuplicateCode {
        /// The shared code.
        code: u16,
        /// Name of the first region with the code.
        first: String,
        /// Name of the second region with the code.
        second: String,
    },
    /// Two regions share a name.
    #[error("region name {name} is used twice")]
    DuplicateName {
        /// The shared name.
        name: String,
    },
    /// Region code 0 is reserved (it never appears in a box id).
    #[error("region {name} has code 0, which is reserved; use 1..=65535")]
    ZeroCode {
        /// The region's name.
        name: String,
    },
    /// A region name is empty or contains characters that break `rtt_ms` keys or
    /// PD labels.
    #[error("region name {name:?} is invalid: {reason}")]
    BadRegionName {
        /// The name as written.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `primary` names no region of the topology.
    #[error("primary region {primary} is not one of the regions")]
    PrimaryNotARegion {
        /// The primary as written.
        primary: String,
    },
    /// Region survival needs at least three regions (a majority must outlive any one).
    #[error("survival = \"region\" needs at least three regions, found {found}")]
    RegionSurvivalNeedsThreeRegions {
        /// How many regions the topology has.
        found: usize,
    },
    /// A region lists no zones.
    #[error("region {region} lists no zones")]
    NoZones {
        /// The region's name.
        region: String,
    },
    /// A zone name is empty.
    #[error("region {region} has an empty zone name")]
    EmptyZone {
        /// The region's name.
        region: String,
    },
    /// A region lists the same zone twice.
    #[error("region {region} lists zone {zone} twice")]
    DuplicateZone {
        /// The region's name.
        region: String,
        /// The repeated zone.
        zone: String,
    },
    /// A region lists no gateways.
    #[error("region {region} lists no gateways")]
    NoGateways {
        /// The region's name.
        region: String,
    },
    /// A gateway address is not `host:port`.
    #[error("region {region} has a bad gateway {field} address {addr:?}: {reason}")]
    BadGateway {
        /// The region's name.
        region: String,
        /// `"quic"` or `"admin"`.
        field: &'static str,
        /// The address as written.
        addr: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `rtt_ms` has an entry from a region to itself.
    #[error("rtt_ms entry \"{pair}\" pairs a region with itself")]
    RttForSameRegion {
        /// The pair as written.
        pair: String,
    },
    /// An `rtt_ms` key is not of the form `"a:b"`.
    #[error("rtt_ms key \"{pair}\" is not of the form \"region:region\"")]
    UnknownPairName {
        /// The key as written.
        pair: String,
    },
    /// The placement cannot meet the survival goal: losing `lost` leaves `range`
    /// without a majority of its voters (or the voters cannot be placed at all).
    #[error(
        "cannot survive: losing {lost} leaves {range} without a majority of its voters ({detail})"
    )]
    CannotSurvive {
        /// The key range, as `region <name>` or `global`.
        range: String,
        /// The failure domain lost, as `zone <region>/<zone>` or `region <name>`.
        lost: String,
        /// Voter counts and what would fix the topology.
        detail: String,
    },
}

/// Result with the geography error.
pub type Result<T> = std::result::Result<T, Error>;
