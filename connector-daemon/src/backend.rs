//! The seam between the daemon and WhatsApp: one client per session, reporting what happens on
//! its socket as [`BackendEvent`]s, in order. `whatsapp` speaks the real protocol; `simulator`
//! stands in for it in tests and demos. Nothing above this module knows which one runs.

use async_trait::async_trait;
use shared::directory::{Contact, Group};
use shared::inbox::Incoming;
use shared::media::{FetchError, MediaRef};
use shared::message::{Content, MessageStatus};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

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
    /// The QR codes ran out. With `code_outstanding`, a phone code asked for on this connection
    /// may still be typed on the phone: the client keeps its socket up for it (as WhatsApp Web
    /// does), and only a new client shows QR codes again. Without, the client closed and is done.
    QrExhausted { code_outstanding: bool },
    /// The phone code given out no longer links anything: WhatsApp asked for a new one, or refused
    /// the request (`retry_after`, when it said how long to wait), or the phone's confirmation
    /// failed.
    PairingFailed { reason: String, retry_after: Option<Duration> },
    /// The phone accepted the pairing. WhatsApp then restarts the stream (a
    /// [`Cause::Restart`]); the session logs in on the same client.
    Paired(Identity),
    /// Logged in and ready.
    Connected(Identity),
    /// The number's own profile name changed or first arrived (after a pairing, with the first
    /// sync). WhatsApp clients announce themselves online when it does.
    ProfileName(String),
    /// The connection ended; the same client can connect again ([`Client::reconnect`]).
    Disconnected { reason: String, cause: Cause },
    /// The device was unlinked (from the phone or by WhatsApp): the stored pairing is void.
    LoggedOut { reason: String },
    /// Another client logged in with the same credentials and took over the stream.
    StreamReplaced,
    /// WhatsApp refuses this client in a way no reconnect changes (an outdated version, a
    /// refused login other than a logout or a ban): the client is done.
    Refused { reason: String },
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
    /// The recipient's device cannot take these messages (a receipt of type `sent`, from a LID
    /// peer lacking what they need): WhatsApp delivered them to nobody.
    Undeliverable { ids: Vec<String> },
}

/// Why a connection ended, which says when to connect again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// WhatsApp closed the stream on purpose and expects the client back at once: the restart
    /// (stream error 515) that follows every pairing. Not a failure.
    Restart,
    /// The connection failed or was lost (an outage, a dead socket, a server restarting):
    /// connect again after a backoff, however long it lasts.
    Lost,
    /// WhatsApp said the client connects too often (stream error 429): back off far longer.
    RateLimited,
}

/// Why a message could not be handed to WhatsApp.
#[derive(Debug, Clone, PartialEq)]
pub enum SendFailure {
    /// No usable connection right now (the socket is down, or went while writing): the same
    /// message goes again once connected, and nothing is counted.
    NotConnected(String),
    /// WhatsApp (or the library) will never take this message as it is: a refusal (not a member
    /// of the group any more, no such recipient), a request that cannot be made.
    Rejected(String),
    /// It failed this time for another reason (a timeout, an encryption failure, the client not
    /// logged in yet, a server error, a file not uploaded): counted, tried again after a pause,
    /// failed after the last attempt.
    Failed(String),
}

/// Where a client reports, in the order things happen. What concerns the messages sent (acks,
/// receipts) and the directory (contacts) goes to workers of its own, so an acknowledgement never
/// waits behind a large contact sync on the session's supervisor, which gets the rest.
#[derive(Clone)]
pub struct Events {
    status: mpsc::UnboundedSender<BackendEvent>,
    acks: Option<Arc<Acks>>,
    receipts: Option<mpsc::UnboundedSender<BackendEvent>>,
    contacts: Option<mpsc::UnboundedSender<BackendEvent>>,
}

impl Events {
    /// Everything to one channel.
    pub fn to(status: mpsc::UnboundedSender<BackendEvent>) -> Events {
        Events { status, acks: None, receipts: None, contacts: None }
    }

    /// Acks to `acks`, receipts and contacts to their workers, the rest to `status`.
    pub fn routed(
        status: mpsc::UnboundedSender<BackendEvent>,
        acks: Arc<Acks>,
        receipts: mpsc::UnboundedSender<BackendEvent>,
        contacts: mpsc::UnboundedSender<BackendEvent>,
    ) -> Events {
        Events { status, acks: Some(acks), receipts: Some(receipts), contacts: Some(contacts) }
    }

    /// Reports an event; `false` once nobody listens (the client is being dropped).
    pub fn send(&self, event: BackendEvent) -> bool {
        // A receipt from the recipient's side means WhatsApp's server took the message: it
        // answers for an acknowledgement that is late (or lost), as WhatsApp Web reads it.
        if let (BackendEvent::Receipt { ids, .. } | BackendEvent::Undeliverable { ids }, Some(acks)) = (&event, &self.acks) {
            for id in ids {
                acks.answer(id, None);
            }
        }
        let route = match (&event, &self.acks, &self.receipts, &self.contacts) {
            (BackendEvent::ServerAck { id, error }, Some(acks), _, _) => {
                // An answer nobody waits for any more (its sender stopped) is dropped.
                acks.answer(id, error.clone());
                return !self.status.is_closed();
            }
            (BackendEvent::Receipt { .. } | BackendEvent::Undeliverable { .. }, _, Some(receipts), _) => receipts,
            (BackendEvent::Contacts(_), _, _, Some(contacts)) => contacts,
            _ => &self.status,
        };
        route.send(event).is_ok()
    }
}

/// The message a session's sender waits on WhatsApp's answer for: one at a time, so one slot.
#[derive(Default)]
pub struct Acks(Mutex<Option<(String, oneshot::Sender<Option<String>>)>>);

impl Acks {
    /// Waits for WhatsApp's answer (`None`: taken; `Some(code)`: refused) to the message sent
    /// with WhatsApp id `id`, from now on: call it before the send, as the answer may come first.
    pub fn expect(&self, id: &str) -> oneshot::Receiver<Option<String>> {
        let (answer, answered) = oneshot::channel();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((id.to_owned(), answer));
        answered
    }

    /// WhatsApp answered for `id`; `true` when someone waited for it.
    fn answer(&self, id: &str, error: Option<String>) -> bool {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match slot.take() {
            Some((expected, answer)) if expected == id => answer.send(error).is_ok(),
            other => {
                *slot = other;
                false
            }
        }
    }
}

/// Where a client hands the messages it receives. WhatsApp's server is told they arrived only
/// once `store` answered `Ok`; on `Err` they stay unacknowledged and WhatsApp delivers them
/// again, so a client must not drop a batch it could not hand over. A batch may repeat
/// messages stored before (their acknowledgement was lost): they are stored once.
#[async_trait]
pub trait Inbox: Send + Sync {
    /// `Ok` once the batch is durable (what the session keeps of it: not a contact's status
    /// post); the client then sends read receipts for the entries [`Kept::read`] names.
    async fn store(&self, batch: Vec<Incoming>) -> Result<Kept, String>;

    /// The client's read receipts for these messages went out: they are read. They are named as
    /// they were stored: by chat and sender (`Content::chat`, `Content::from`) and WhatsApp id.
    async fn read(&self, chat: &str, sender: &str, wa_ids: Vec<String>);
}

/// What the inbox made of a batch: the entries (by position) the client sends read receipts
/// for. Only messages of a session that reads what arrives (`autoRead`), and never a contact's
/// status post (a receipt there tells the contact it was viewed), a change or an undecryptable
/// message.
#[derive(Debug, Default, PartialEq)]
pub struct Kept {
    pub read: Vec<usize>,
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
    /// Connects again after [`BackendEvent::Disconnected`], on the same client: what it holds in
    /// memory (after a pairing, that the first full sync is still to run) carries over. `Err`
    /// when the client was closed (`disconnect`, `logout`, a final event) and a new one is needed.
    async fn reconnect(&self) -> Result<(), String>;

    /// Waits up to `within` for the socket to be up (before login), as a phone-code request needs.
    async fn wait_for_socket(&self, within: Duration) -> Result<(), String>;

    /// Asks WhatsApp for the 8-character code that links `phone` without a QR scan. Fails at
    /// once when the socket is not up: wait for it first ([`Client::wait_for_socket`]).
    async fn pair_with_code(&self, phone: &str) -> Result<String, String>;

    /// Shows the number online (`true`) or offline to its contacts. WhatsApp clients announce
    /// themselves online on every login, and while one is, the phone gets no notifications.
    async fn set_presence(&self, available: bool) -> Result<(), String>;

    /// Unlinks the device on WhatsApp's side through the live socket; `Err` unless WhatsApp
    /// took it. The client is not used again afterwards; the store is the caller's to wipe.
    async fn logout(&self) -> Result<(), String>;

    /// Uploads a media message's file (of `kind`) to WhatsApp's media servers: the reference
    /// the message carries to it, which also fetches it again.
    async fn upload(&self, kind: &str, file: &[u8]) -> Result<MediaRef, SendFailure>;

    /// Sends a message with the WhatsApp id `wa_id` it was given when accepted, so sending it
    /// again after a crash is the same message to WhatsApp. `Ok` means the stanza went out;
    /// WhatsApp's answer comes as [`BackendEvent::ServerAck`]. A media message carries `file`,
    /// the reference its upload gave. With `fresh` (an attempt after one that failed: WhatsApp
    /// may have said the group's members or the recipient's devices had changed), what the
    /// client has cached of them is read again first.
    async fn send(&self, wa_id: &str, message: &Content, file: Option<&MediaRef>, fresh: bool) -> Result<(), SendFailure>;

    /// Whether a phone-number JID is on WhatsApp (a usync query). A message to a number that is
    /// not is taken by WhatsApp's server and delivered to nobody, so it is checked first.
    async fn on_whatsapp(&self, jid: &str) -> Result<bool, SendFailure>;

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
