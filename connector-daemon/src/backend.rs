//! The seam between the daemon and WhatsApp: one client per session, reporting what happens on
//! its socket as [`BackendEvent`]s, in order. `whatsapp` speaks the real protocol; `simulator`
//! stands in for it in tests and demos. Nothing above this module knows which one runs.

use async_trait::async_trait;
use shared::directory::{Contact, Group};
use shared::inbox::{Incoming, Stored};
use shared::media::{FetchError, MediaRef};
use shared::message::{Content, MessageStatus};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Who the attached number is, as far as WhatsApp has told us.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Identity {
    pub jid: String,
    pub lid: Option<String>,
    pub phone: Option<String>,
    pub push_name: Option<String>,
}

/// Everything a client reports, as one typed enum (whatsmeow's style).
#[derive(Debug, Clone, PartialEq)]
pub enum BackendEvent {
    /// A code to show for scanning, valid for `valid_for`.
    Qr { code: String, valid_for: Duration },
    /// The client showed all its codes and gave up; a new client is needed to keep pairing.
    QrExhausted,
    /// The phone accepted the pairing.
    Paired(Identity),
    /// Logged in and ready.
    Connected(Identity),
    /// The socket went away or could not be opened; reconnecting may help.
    Disconnected { reason: String },
    /// The device was unlinked (from the phone or by WhatsApp): the stored pairing is void.
    LoggedOut { reason: String },
    /// Another client logged in with the same credentials and took over the stream.
    StreamReplaced,
    /// WhatsApp banned the number for a while: `lifts_in` from now, when WhatsApp said.
    TemporaryBan { reason: String, lifts_in: Option<Duration> },
    /// What WhatsApp told about contacts (address-book sync, push names): kept as they come,
    /// since WhatsApp offers no call that lists them later.
    Contacts(Vec<Contact>),
    /// WhatsApp's server took (`error: None`) or refused the message sent with this id. Only
    /// this makes a message `sent`: a send that returned is a stanza written, no more.
    ServerAck { id: String, error: Option<String> },
    /// The recipient's side reached a step (`Delivered`, `Read`, `Played`) for these message ids.
    Receipt { ids: Vec<String>, status: MessageStatus },
}

/// Why a message could not be handed to WhatsApp.
#[derive(Debug, Clone, PartialEq)]
pub enum SendFailure {
    /// No usable connection right now: the same message goes again once connected.
    NotConnected(String),
    /// WhatsApp (or the library) will never take this message as it is.
    Rejected(String),
    /// The message's file could not be uploaded: counted as a send, so it fails after a few.
    UploadFailed(String),
}

pub type Events = mpsc::UnboundedSender<BackendEvent>;

/// Where a client hands the messages it receives. WhatsApp's server is told they arrived only
/// once `store` answered `Ok`; on `Err` they stay unacknowledged and WhatsApp delivers them
/// again, so a client must not drop a batch it could not hand over. A batch may repeat
/// messages stored before (their acknowledgement was lost): they are stored once.
#[async_trait]
pub trait Inbox: Send + Sync {
    /// `Ok` once the batch is durable; with [`Stored::auto_read`], the client then sends read
    /// receipts for it.
    async fn store(&self, batch: Vec<Incoming>) -> Result<Stored, String>;

    /// The client's read receipts for these messages went out: they are read. They are named as
    /// they were stored: by chat and sender (`Content::chat`, `Content::from`) and WhatsApp id.
    async fn read(&self, chat: &str, sender: &str, wa_ids: Vec<String>);
}

/// What a backend is given to work with. A session's store is plain files in a directory, so
/// wiping it is removing the directory: the backend has no say in it, as WhatsApp has none in
/// what a client deletes locally (the device stays linked on WhatsApp's side until unlinked).
#[async_trait]
pub trait Backend: Send + Sync {
    /// Starts a client for the session from the pairing stored in `store` (or to pair, with
    /// none). It connects in the background, reports on `events`, and hands the messages it
    /// receives to `inbox`.
    async fn connect(&self, session_id: &str, store: &Path, events: Events, inbox: Arc<dyn Inbox>) -> Result<Arc<dyn Client>, String>;
}

#[async_trait]
pub trait Client: Send + Sync {
    /// Asks WhatsApp for the 8-character code that links `phone` without a QR scan.
    async fn pair_with_code(&self, phone: &str) -> Result<String, String>;

    /// Unlinks the device on WhatsApp's side through the live socket; `Err` unless WhatsApp
    /// took it. The client is not used again afterwards; the store is the caller's to wipe.
    async fn logout(&self) -> Result<(), String>;

    /// Sends a message with the WhatsApp id `wa_id` it was given when accepted, so sending it
    /// again after a crash is the same message to WhatsApp and the recipient sees it once. `Ok`
    /// means the stanza went out; WhatsApp's answer comes as [`BackendEvent::ServerAck`]. A
    /// media message's `file` is uploaded first; `Ok` then holds the reference to fetch it again.
    async fn send(&self, wa_id: &str, message: &Content, file: Option<&[u8]>) -> Result<Option<MediaRef>, SendFailure>;

    /// Downloads and decrypts a file from WhatsApp's media servers, refusing one past
    /// `max_bytes` (`too_large`) whatever length its sender claimed.
    async fn download(&self, media: &MediaRef, max_bytes: u64) -> Result<Vec<u8>, FetchError>;

    /// Shows "typing…" in a chat (`true`), or stops showing it (`false`).
    async fn typing(&self, chat: &str, typing: bool) -> Result<(), String>;

    /// The groups the number is in, with their members, fetched from WhatsApp.
    async fn groups(&self) -> Result<Vec<Group>, String>;

    /// Closes the socket, keeping the pairing. The client is not used again afterwards.
    async fn disconnect(&self);
}

/// Read receipts go one per chat and sender: the message ids of `read` grouped by that key, in
/// the order each key first appears.
pub fn receipts_by_chat<K: PartialEq>(read: impl IntoIterator<Item = (K, String)>) -> Vec<(K, Vec<String>)> {
    let mut groups: Vec<(K, Vec<String>)> = Vec::new();
    for (key, id) in read {
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, ids)) => ids.push(id),
            None => groups.push((key, vec![id])),
        }
    }
    groups
}

/// WhatsApp's 8-character pairing code as users type it: `ABCD-1234`.
pub fn format_pairing_code(raw: &str) -> String {
    let raw: String = raw.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_uppercase();
    if raw.len() == 8 { format!("{}-{}", &raw[..4], &raw[4..]) } else { raw }
}

#[cfg(test)]
mod tests {
    #[test]
    fn receipts_group_ids_per_chat_and_sender_in_order() {
        let read = [(("a", "x"), "1"), (("b", "y"), "2"), (("a", "x"), "3"), (("a", "z"), "4")].map(|(k, id)| (k, id.to_owned()));
        let grouped = super::receipts_by_chat(read);
        assert_eq!(grouped, [(("a", "x"), vec!["1".to_owned(), "3".to_owned()]), (("b", "y"), vec!["2".to_owned()]), (("a", "z"), vec!["4".to_owned()])]);
    }

    #[test]
    fn pairing_codes_read_as_two_groups_of_four() {
        assert_eq!(super::format_pairing_code("abcd1234"), "ABCD-1234");
        assert_eq!(super::format_pairing_code("ABCD-1234"), "ABCD-1234");
    }
}
