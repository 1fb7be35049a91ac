//! Rossby's geography (pure, no I/O): the topology of regions and gateways, the
//! placement of each region's box key range on TiKV (PD placement rules), routing
//! of requests to a box's home region, and the WAN latency model used by the
//! multi-region simulation. Filled by the geography work; this crate is a
//! placeholder until then.
