//! Rich messages, receipts and typing indicators.
//!
//! What a message holds is end-to-end encrypted, so everything here is the
//! client's business; the gateway only stores and forwards the envelopes:
//! - A message with attachments or a location travels as `Content.message` (a
//!   `RichMessage`); plain text stays `Content.text`. The attachments' blob ids
//!   also go into `SendRequest.attachments` so the gateway keeps the blobs for
//!   the message retention.
//! - Receipts are small stored messages to the sender's box naming the message
//!   ids received (`delivered`) or shown (`read`). With read receipts turned
//!   off, shown messages are acknowledged as delivered only. Receipts are never
//!   answered with receipts and get no copy for the own devices.
//! - Typing indicators are ephemeral sends: pushed to the recipient's devices
//!   online now and never stored.

use crate::error::{Error, Result};
use crate::sdk::{Batch, Body, Client, Delivery, ReceiptedMessage, SendReport, Target};
use crate::state::OutboxEntry;
use rossby_keyspace::{BoxId, MessageId};
use rossby_protocol::pb;
use std::collections::BTreeMap;

/// Most attachments one message may carry.
pub const MAX_ATTACHMENTS: usize = 32;
/// Most message ids one receipt names (more are split over several receipts).
pub const MAX_RECEIPT_IDS: usize = 256;
/// Longest text a message may carry, in bytes (the gateway's envelope limit
/// bounds the whole message too).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Longest preview a receipt shows of a sent message, in characters.
const PREVIEW_CHARS: usize = 60;

/// What a send carries.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Outgoing {
    /// Plain text.
    Text(String),
    /// Attachments or a location, maybe with text.
    Message(pb::RichMessage),
    /// A receipt.
    Receipt(pb::Receipt),
}

impl Outgoing {
    /// The outbox fields: `text`, `message`, `receipt`.
    pub(crate) fn into_fields(self) -> (String, Option<pb::RichMessage>, Option<pb::Receipt>) {
        match self {
            Outgoing::Text(t) => (t, None, None),
            Outgoing::Message(m) => (String::new(), Some(m), None),
            Outgoing::Receipt(r) => (String::new(), None, Some(r)),
        }
    }
}

/// The content for the recipient and, except for receipts, the copy for this
/// account's other devices.
pub(crate) fn outgoing(entry: &OutboxEntry, target: &Target) -> (pb::Content, Option<pb::Content>) {
    let content = |body| pb::Content {
        sent_at_ms: entry.sent_at_ms,
        body: Some(body),
        access_secret: Vec::new(),
    };
    if let Some(receipt) = &entry.receipt {
        return (content(pb::content::Body::Receipt(receipt.clone())), None);
    }
    let copy = pb::SentCopy {
        to_box: target.box_id.to_vec(),
        to_identifier: target.identifier.clone(),
        text: entry.text.clone(),
        message: entry.message.clone(),
        mls: Vec::new(),
    };
    let body = match &entry.message {
        Some(m) => pb::content::Body::Message(m.clone()),
        None => pb::content::Body::Text(entry.text.clone()),
    };
    (content(body), Some(content(pb::content::Body::Sent(copy))))
}

/// The blob ids a message references.
pub(crate) fn blob_ids(message: Option<&pb::RichMessage>) -> Vec<Vec<u8>> {
    message
        .map(|m| m.attachments.iter().map(|a| a.blob_id.clone()).collect())
        .unwrap_or_default()
}

/// A one-line description of a message: its text, with what is attached.
pub fn preview(text: &str, message: Option<&pb::RichMessage>) -> String {
    let Some(m) = message else {
        return text.to_string();
    };
    let mut parts: Vec<String> = m
        .attachments
        .iter()
        .map(|a| format!("[file {} {} bytes]", a.file_name, a.size))
        .collect();
    if let Some(l) = &m.location {
        parts.push(format!("[location {}]", format_location(l)));
    }
    if !m.text.is_empty() {
        parts.push(m.text.clone());
    }
    parts.join(" ")
}

/// A receipt as the outbox lists it.
pub(crate) fn describe_receipt(r: &pb::Receipt) -> String {
    let kind = match pb::ReceiptKind::try_from(r.kind) {
        Ok(pb::ReceiptKind::Read) => "read",
        _ => "delivered",
    };
    format!("[{kind} receipt for {} messages]", r.message_ids.len())
}

/// `LAT,LON` with six decimals (about 0.1 m).
pub fn format_location(l: &pb::Location) -> String {
    format!("{:.6},{:.6}", l.latitude, l.longitude)
}

/// Parses `LAT,LON` (decimal degrees, WGS 84).
pub fn parse_location(s: &str) -> Result<pb::Location> {
    let invalid = || {
        Error::Invalid(format!(
            "invalid location {s:?}: expected LAT,LON in decimal degrees, e.g. 52.5200,13.4050"
        ))
    };
    let (lat, lon) = s.split_once(',').ok_or_else(invalid)?;
    let location = pb::Location {
        latitude: lat.trim().parse().map_err(|_| invalid())?,
        longitude: lon.trim().parse().map_err(|_| invalid())?,
        ..pb::Location::default()
    };
    check_location(&location)?;
    Ok(location)
}

fn check_location(l: &pb::Location) -> Result<()> {
    if !(l.latitude.is_finite() && (-90.0..=90.0).contains(&l.latitude)) {
        return Err(Error::Invalid(format!(
            "latitude {} is outside -90..90",
            l.latitude
        )));
    }
    if !(l.longitude.is_finite() && (-180.0..=180.0).contains(&l.longitude)) {
        return Err(Error::Invalid(format!(
            "longitude {} is outside -180..180",
            l.longitude
        )));
    }
    if !(l.accuracy_m.is_finite() && l.accuracy_m >= 0.0) {
        return Err(Error::Invalid(format!(
            "accuracy {} m is not a distance",
            l.accuracy_m
        )));
    }
    Ok(())
}

/// Checks a message before it is queued: limits, and that every attachment
/// reference is complete.
pub(crate) fn check_message(m: &pb::RichMessage) -> Result<()> {
    if m.text.len() > MAX_TEXT_BYTES {
        return Err(Error::Invalid(format!(
            "the text has {} bytes; at most {MAX_TEXT_BYTES} are allowed",
            m.text.len()
        )));
    }
    if m.attachments.len() > MAX_ATTACHMENTS {
        return Err(Error::Invalid(format!(
            "{} attachments; at most {MAX_ATTACHMENTS} are allowed",
            m.attachments.len()
        )));
    }
    for a in &m.attachments {
        if a.blob_id.len() != 32 || a.key.len() != 32 || a.sha256.len() != 32 || a.chunk_size == 0 {
            return Err(Error::Invalid(format!(
                "attachment {:?} is not an uploaded blob reference",
                a.file_name
            )));
        }
    }
    if let Some(l) = &m.location {
        check_location(l)?;
    }
    Ok(())
}

/// Whether a received message is one a receipt acknowledges: a message from
/// another box (not a receipt, a typing indicator, a group message or a copy
/// of the own sends).
fn wants_receipt(body: &Body) -> bool {
    matches!(body, Body::Text(_) | Body::Message(_))
}

/// The beginning of a description, as a receipt shows it.
pub(crate) fn shorten(s: &str) -> String {
    match s.char_indices().nth(PREVIEW_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

impl Client {
    /// Sends a message with attachments (references returned by
    /// [`Client::upload_attachment`]) or a location, or both, and text; a copy
    /// goes to this account's other devices. A message with text only is sent
    /// like [`Client::send_text`].
    pub async fn send_message(&self, to: &str, message: pb::RichMessage) -> Result<SendReport> {
        check_message(&message)?;
        self.credentials().await?;
        let target = self.resolve(to).await?;
        let outgoing = if message.attachments.is_empty() && message.location.is_none() {
            Outgoing::Text(message.text)
        } else {
            Outgoing::Message(message)
        };
        self.send_entry(target, outgoing).await
    }

    /// Acknowledges the messages of `batch` to their senders: one receipt per
    /// sending box. `Read` is sent as `Delivered` while read receipts are off.
    /// Returns the receipts that could be sent and, for the others, why not
    /// (a sender who deleted the account or blocked this one, for example);
    /// unconfirmed ones stay in the outbox.
    pub async fn send_receipts(
        &self,
        batch: &Batch,
        kind: pb::ReceiptKind,
    ) -> Result<Vec<(BoxId, Result<SendReport>)>> {
        let kind = if kind == pb::ReceiptKind::Read && !self.read_receipts().await {
            pb::ReceiptKind::Delivered
        } else {
            kind
        };
        let own = self.own_box().await?;
        let mut by_sender: BTreeMap<[u8; 16], Vec<Vec<u8>>> = BTreeMap::new();
        for m in &batch.messages {
            let sender = *m.sender_box.as_bytes();
            if sender != own && wants_receipt(&m.body) {
                by_sender
                    .entry(sender)
                    .or_default()
                    .push(m.message_id.to_vec());
            }
        }
        let mut results = Vec::new();
        for (sender, ids) in by_sender {
            for chunk in ids.chunks(MAX_RECEIPT_IDS) {
                let target = Target {
                    box_id: sender,
                    identifier: String::new(),
                };
                let receipt = pb::Receipt {
                    kind: kind as i32,
                    message_ids: chunk.to_vec(),
                };
                let result = self.send_entry(target, Outgoing::Receipt(receipt)).await;
                results.push((crate::sdk::box_id(sender), result));
            }
        }
        Ok(results)
    }

    /// Tells the recipient's devices that are online now that this user
    /// started (`true`) or stopped typing. Nothing is stored: devices offline
    /// never see it.
    pub async fn send_typing(&self, to: &str, typing: bool) -> Result<()> {
        self.credentials().await?;
        let target = self.resolve(to).await?;
        let content = pb::Content {
            sent_at_ms: self.now_ms(),
            body: Some(pb::content::Body::Typing(pb::Typing { typing })),
            access_secret: Vec::new(),
        };
        let delivery = Delivery {
            message_id: *MessageId::new().as_bytes(),
            content: &content,
            copy: None,
            attachments: Vec::new(),
            ephemeral: true,
            wake: pb::Wake::None,
            mls: false,
        };
        self.deliver_contents(delivery, &target).await.map(|_| ())
    }

    /// Whether shown messages are acknowledged as read (the default).
    pub async fn read_receipts(&self) -> bool {
        !self.store.lock().await.state.read_receipts_off
    }

    /// Turns read receipts on or off (a setting of this device only: the
    /// gateway never learns it).
    pub async fn set_read_receipts(&self, on: bool) -> Result<()> {
        let mut store = self.store.lock().await;
        store.state.read_receipts_off = !on;
        store.save()
    }

    /// Fills in what this device remembers of the messages a receipt names.
    pub(crate) async fn with_previews(&self, body: Body) -> Body {
        let Body::Receipt { kind, messages } = body else {
            return body;
        };
        let store = self.store.lock().await;
        let messages = messages
            .into_iter()
            .map(|m| ReceiptedMessage {
                preview: store
                    .state
                    .sent_log
                    .iter()
                    .rev()
                    .find(|e| e.message_id == m.message_id)
                    .map(|e| e.preview.clone()),
                ..m
            })
            .collect();
        Body::Receipt { kind, messages }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(name: &str) -> pb::Attachment {
        pb::Attachment {
            blob_id: vec![1; 32],
            key: vec![2; 32],
            sha256: vec![3; 32],
            size: 1234,
            chunk_size: 65536,
            media_type: "image/png".into(),
            file_name: name.into(),
        }
    }

    #[test]
    fn locations_parse_and_are_checked() {
        let l = parse_location("52.52, 13.405").unwrap();
        assert_eq!(format_location(&l), "52.520000,13.405000");
        for bad in ["", "52.5", "x,1", "91,0", "0,181", "NaN,0", "0,inf"] {
            assert!(
                matches!(parse_location(bad), Err(Error::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn messages_are_checked_before_they_are_queued() {
        let ok = pb::RichMessage {
            text: "see".into(),
            attachments: vec![attachment("a.png")],
            location: None,
        };
        check_message(&ok).unwrap();
        let mut incomplete = ok.clone();
        incomplete.attachments[0].key.clear();
        assert!(check_message(&incomplete).is_err());
        let too_many = pb::RichMessage {
            attachments: vec![attachment("a"); MAX_ATTACHMENTS + 1],
            ..ok.clone()
        };
        assert!(check_message(&too_many).is_err());
        let far = pb::RichMessage {
            location: Some(pb::Location {
                latitude: 100.0,
                ..pb::Location::default()
            }),
            ..ok
        };
        assert!(check_message(&far).is_err());
    }

    #[test]
    fn receipts_get_no_copy_and_messages_do() {
        let target = Target {
            box_id: [7; 16],
            identifier: "bob@example.com".into(),
        };
        let receipt = OutboxEntry {
            receipt: Some(pb::Receipt {
                kind: pb::ReceiptKind::Read as i32,
                message_ids: vec![vec![1; 16]],
            }),
            ..OutboxEntry::default()
        };
        let (content, copy) = outgoing(&receipt, &target);
        assert!(matches!(content.body, Some(pb::content::Body::Receipt(_))));
        assert!(copy.is_none());
        let message = pb::RichMessage {
            text: "here".into(),
            attachments: vec![attachment("a.png")],
            location: None,
        };
        let entry = OutboxEntry {
            message: Some(message.clone()),
            ..OutboxEntry::default()
        };
        let (content, copy) = outgoing(&entry, &target);
        assert_eq!(
            content.body,
            Some(pb::content::Body::Message(message.clone()))
        );
        let Some(pb::content::Body::Sent(copy)) = copy.and_then(|c| c.body) else {
            panic!("a message has a copy");
        };
        assert_eq!(copy.message, Some(message.clone()));
        assert_eq!(copy.to_identifier, "bob@example.com");
        assert_eq!(blob_ids(Some(&message)), vec![vec![1; 32]]);
    }

    #[test]
    fn previews_name_attachments_and_are_shortened() {
        let m = pb::RichMessage {
            text: "look".into(),
            attachments: vec![attachment("cat.png")],
            location: Some(pb::Location {
                latitude: 1.5,
                longitude: -2.25,
                ..pb::Location::default()
            }),
        };
        assert_eq!(
            preview("", Some(&m)),
            "[file cat.png 1234 bytes] [location 1.500000,-2.250000] look"
        );
        assert_eq!(preview("plain", None), "plain");
        let long = "é".repeat(100);
        assert_eq!(shorten(&long).chars().count(), PREVIEW_CHARS + 1);
    }
}
