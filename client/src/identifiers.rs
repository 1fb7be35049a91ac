//! The account's identifiers (phone numbers and e-mail addresses): adding one
//! with a verification code, removing, listing, and choosing which ones contacts
//! can find the account by (docs/protocol.md, "Identifiers").
//!
//! Identifiers are normalised and validated here as the gateway does (E.164
//! phone numbers, lower-cased e-mail addresses), so a malformed one fails
//! locally with [`Error::Invalid`] and never reaches the network.

use crate::error::{Error, Result};
use crate::sdk::{Client, normalize};
use rossby_protocol::pb::{self, Method};

/// One identifier of the account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifierInfo {
    /// The normalised identifier; `None` for an identifier bound before the
    /// gateway kept sealed copies (it cannot show it until the identifier is
    /// added again or re-flagged).
    pub identifier: Option<String>,
    /// Whether contacts can find the account by it (the account-wide
    /// discoverable setting still hides every identifier).
    pub discoverable: bool,
    /// When it was bound (milliseconds since the Unix epoch).
    pub bound_at_ms: u64,
}

impl From<pb::IdentifierInfo> for IdentifierInfo {
    fn from(info: pb::IdentifierInfo) -> Self {
        IdentifierInfo {
            identifier: (!info.identifier.is_empty()).then_some(info.identifier),
            discoverable: info.discoverable,
            bound_at_ms: info.bound_at_ms,
        }
    }
}

fn required(info: Option<pb::IdentifierInfo>) -> Result<IdentifierInfo> {
    info.map(IdentifierInfo::from)
        .ok_or_else(|| Error::BadReply("the reply carries no identifier".into()))
}

impl Client {
    /// Starts adding `identifier` to the account: the gateway sends it a
    /// verification code. `discoverable` says whether contacts may find the
    /// account by it once confirmed. Returns when the code expires
    /// (milliseconds since the Unix epoch). One of this account's identifiers
    /// fails with `ALREADY_REGISTERED`; another account's is answered like a
    /// free one (its owner gets the code) and fails at
    /// [`Client::confirm_identifier`].
    pub async fn add_identifier(&self, identifier: &str, discoverable: bool) -> Result<u64> {
        let request = pb::AddIdentifierRequest {
            identifier: normalize(identifier)?,
            discoverable,
        };
        let response: pb::AddIdentifierResponse = self.rpc(Method::AddIdentifier, &request).await?;
        Ok(response.code_expires_at_ms)
    }

    /// Binds `identifier` to the account with the code it received.
    pub async fn confirm_identifier(&self, identifier: &str, code: &str) -> Result<IdentifierInfo> {
        let request = pb::ConfirmIdentifierRequest {
            identifier: normalize(identifier)?,
            code: code.trim().to_string(),
        };
        let response: pb::ConfirmIdentifierResponse =
            self.rpc(Method::ConfirmIdentifier, &request).await?;
        required(response.identifier)
    }

    /// Removes one of the account's identifiers; returns how many remain. The
    /// last one cannot be removed (`LAST_IDENTIFIER`). When it is the one this
    /// device knows the account by (its own name in `whoami` and messages, and
    /// which sends to it stay local), that becomes another remaining one: the
    /// removed identifier may belong to someone else from now on.
    pub async fn remove_identifier(&self, identifier: &str) -> Result<u32> {
        let identifier = normalize(identifier)?;
        let request = pb::RemoveIdentifierRequest {
            identifier: identifier.clone(),
        };
        let response: pb::RemoveIdentifierResponse =
            self.rpc(Method::RemoveIdentifier, &request).await?;
        let own = self.store.lock().await.state.identifier == identifier;
        if own {
            let next = self
                .list_identifiers()
                .await?
                .into_iter()
                .find_map(|i| i.identifier)
                .unwrap_or_default();
            let mut store = self.store.lock().await;
            if store.state.identifier == identifier {
                store.state.identifier = next;
                store.save()?;
            }
        }
        Ok(response.remaining)
    }

    /// The account's identifiers, oldest first.
    pub async fn list_identifiers(&self) -> Result<Vec<IdentifierInfo>> {
        let response: pb::ListIdentifiersResponse = self
            .rpc(Method::ListIdentifiers, &pb::ListIdentifiersRequest {})
            .await?;
        Ok(response
            .identifiers
            .into_iter()
            .map(IdentifierInfo::from)
            .collect())
    }

    /// Makes contacts able to find the account by `identifier`, or not.
    pub async fn set_identifier_discoverable(
        &self,
        identifier: &str,
        discoverable: bool,
    ) -> Result<IdentifierInfo> {
        let request = pb::SetIdentifierDiscoverableRequest {
            identifier: normalize(identifier)?,
            discoverable,
        };
        let response: pb::SetIdentifierDiscoverableResponse = self
            .rpc(Method::SetIdentifierDiscoverable, &request)
            .await?;
        required(response.identifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_identifier_in_a_reply_means_not_shown() {
        let legacy = IdentifierInfo::from(pb::IdentifierInfo {
            identifier: String::new(),
            discoverable: true,
            bound_at_ms: 5,
        });
        assert_eq!(legacy.identifier, None);
        let known = IdentifierInfo::from(pb::IdentifierInfo {
            identifier: "a@b.cd".into(),
            discoverable: false,
            bound_at_ms: 6,
        });
        assert_eq!(known.identifier.as_deref(), Some("a@b.cd"));
        assert!(!known.discoverable);
    }
}
