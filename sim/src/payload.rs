//! What the simulated clients put in their envelopes: enough to recognise, in a
//! fetched envelope, which send or group change it came from.

use rossby_keyspace::{BoxId, MessageId};
use rossby_storage::tables::groups::GroupKey;

/// The meaning of an envelope's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A one-to-one message.
    Direct(MessageId),
    /// A group Commit that moved the group to `epoch`.
    Commit {
        /// The group.
        group: GroupKey,
        /// The epoch the Commit produced.
        epoch: u64,
        /// The Commit's message id.
        msg: MessageId,
        /// True for the Commit-and-Welcome envelope of a joining box.
        welcome: bool,
    },
    /// Remove proposals of a box leaving a group in `epoch`.
    Leave {
        /// The group.
        group: GroupKey,
        /// The (unchanged) epoch.
        epoch: u64,
        /// The leave's message id.
        msg: MessageId,
    },
    /// An application message encrypted in `epoch`.
    App {
        /// The group.
        group: GroupKey,
        /// The epoch it was encrypted in.
        epoch: u64,
        /// Its message id.
        msg: MessageId,
    },
}

const DIRECT: u8 = 1;
const COMMIT: u8 = 2;
const WELCOME: u8 = 3;
const LEAVE: u8 = 4;
const APP: u8 = 5;

impl Payload {
    /// The bytes sent.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(57);
        match self {
            Payload::Direct(msg) => {
                out.push(DIRECT);
                out.extend_from_slice(msg.as_bytes());
            }
            Payload::Commit {
                group,
                epoch,
                msg,
                welcome,
            } => {
                out.push(if *welcome { WELCOME } else { COMMIT });
                group_fields(&mut out, *group, *epoch, *msg);
            }
            Payload::Leave { group, epoch, msg } => {
                out.push(LEAVE);
                group_fields(&mut out, *group, *epoch, *msg);
            }
            Payload::App { group, epoch, msg } => {
                out.push(APP);
                group_fields(&mut out, *group, *epoch, *msg);
            }
        }
        out
    }

    /// Reads bytes written by [`Payload::encode`].
    pub fn decode(bytes: &[u8]) -> Option<Payload> {
        let (&tag, rest) = bytes.split_first()?;
        if tag == DIRECT {
            return Some(Payload::Direct(MessageId::try_from_slice(rest).ok()?));
        }
        if rest.len() != 56 {
            return None;
        }
        let creator = BoxId::try_from_slice(&rest[..16]).ok()?;
        let group_id: [u8; 16] = rest[16..32].try_into().ok()?;
        let epoch = u64::from_be_bytes(rest[32..40].try_into().ok()?);
        let msg = MessageId::try_from_slice(&rest[40..]).ok()?;
        let group = GroupKey { creator, group_id };
        Some(match tag {
            COMMIT | WELCOME => Payload::Commit {
                group,
                epoch,
                msg,
                welcome: tag == WELCOME,
            },
            LEAVE => Payload::Leave { group, epoch, msg },
            APP => Payload::App { group, epoch, msg },
            _ => return None,
        })
    }
}

fn group_fields(out: &mut Vec<u8>, group: GroupKey, epoch: u64, msg: MessageId) {
    out.extend_from_slice(group.creator.as_bytes());
    out.extend_from_slice(&group.group_id);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(msg.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use rossby_keyspace::RegionId;

    #[test]
    fn payloads_round_trip() {
        let mut rng = StdRng::seed_from_u64(3);
        let group = GroupKey {
            creator: ids::box_id(&mut rng, RegionId(1)),
            group_id: ids::group_id(&mut rng),
        };
        let msg = ids::message_id(&mut rng, 5);
        for p in [
            Payload::Direct(msg),
            Payload::Commit {
                group,
                epoch: 7,
                msg,
                welcome: true,
            },
            Payload::Commit {
                group,
                epoch: 7,
                msg,
                welcome: false,
            },
            Payload::Leave {
                group,
                epoch: 2,
                msg,
            },
            Payload::App {
                group,
                epoch: 9,
                msg,
            },
        ] {
            assert_eq!(Payload::decode(&p.encode()), Some(p));
        }
        assert_eq!(Payload::decode(b"junk"), None);
    }
}
