//! The Redis keyspace: the only place a key is spelled.
//!
//! Keys an organization's requests use together share the hash tag `{org:<id>}`, so they land on
//! one Redis Cluster slot and a Lua script may touch them atomically. The scripts that queue a
//! command also touch the (global) command streams and heartbeats, and stream slots the
//! deployment-wide set: they need a single Redis node today (see ARCHITECTURE's cluster note). Isolation between
//! organizations is structural: a caller's organization is part of every key it can reach, so a
//! session id of another organization simply resolves to a key that does not exist.

const PREFIX: &str = "gw";

/// Every organization's webhook endpoints, each as the JSON `["<org>", "<endpoint id>"]`: what
/// the daemons' delivery workers go through (platform-wide, like [`session_owner`]).
pub fn webhook_endpoints() -> String {
    format!("{PREFIX}:webhook-endpoints")
}

/// The organization's webhook endpoints (ids, scored by creation time).
pub fn org_webhooks(org: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:webhooks")
}

/// One webhook endpoint (a hash): its settings, signing secrets and delivery health.
pub fn webhook(org: &str, webhook_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:webhook:{webhook_id}")
}

/// The endpoint's consumer group on the organization's event log ([`org_events`]): the group's
/// position is how far the endpoint's events were queued for delivery.
pub fn webhook_group(webhook_id: &str) -> String {
    format!("webhook:{webhook_id}")
}

/// The endpoint's events for one session waiting to be delivered, oldest first (a list of event
/// JSON): this prefix and the session id, so the delivery scripts can reach any session's.
pub fn webhook_queue_prefix(org: &str, webhook_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:webhook:{webhook_id}:queue:")
}

/// The sessions with events queued for the endpoint (a sorted set), scored by when the first
/// is due: now, after a retry's backoff, or when a worker's claim on it lapses.
pub fn webhook_due(org: &str, webhook_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:webhook:{webhook_id}:due")
}

/// Per session of the endpoint (a hash): the worker's claim on its first event (`claim:<s>`),
/// that event's failed attempts (`tries:<s>`) and when it first failed (`since:<s>`).
pub fn webhook_heads(org: &str, webhook_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:webhook:{webhook_id}:heads")
}

/// The endpoint's rotated-out secret, which still signs beside the new one until the key
/// expires with the rotation's overlap: Redis deletes it on time, delivery or not.
pub fn webhook_previous_secret(org: &str, webhook_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:webhook:{webhook_id}:previous-secret")
}

/// The endpoint's dead letters (a stream): events given up on, with why, until redelivered.
pub fn webhook_dead_letters(org: &str, webhook_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:webhook:{webhook_id}:dead")
}

/// One session's row (a JSON document).
pub fn session(org: &str, session_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}")
}

/// The organization's sessions, scored by creation order, for listing in a stable order.
pub fn org_sessions(org: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:sessions")
}

/// Counts the organization's session creations: the scores of [`org_sessions`].
pub fn org_session_counter(org: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session-counter")
}

/// An organization's overrides of the deployment's quotas (`shared::quota`), set by an operator.
pub fn org_quotas(org: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:quotas")
}

/// The messages an organization's sessions accepted in one minute (epoch minute `minute`).
pub fn org_message_window(org: &str, minute: i64) -> String {
    format!("{PREFIX}:{{org:{org}}}:quota:messages:{minute}")
}

/// Session id → organization id, for platform-wide lookups (the daemon, super_admin tools).
pub fn session_owner(session_id: &str) -> String {
    format!("{PREFIX}:session-owner:{session_id}")
}

/// Sessions whose outbox holds queued messages, scored by when the first of them expires
/// (members `<org>/<session>`), so daemons fail expired messages even while nobody runs the
/// session. Deployment-wide, like [`session_owner`].
pub fn outbox_deadlines() -> String {
    format!("{PREFIX}:outbox-deadlines")
}

/// Present for a while after a session was deleted, so a daemon that kept its store (down at
/// the time) knows to unlink and remove it, and never mistakes lost data for a deletion.
pub fn session_deleted(session_id: &str) -> String {
    format!("{PREFIX}:session-deleted:{session_id}")
}

/// Commands for sessions no gateway holds yet; any daemon may take them.
pub fn unplaced_commands() -> String {
    format!("{PREFIX}:commands:unplaced")
}

/// Commands for the sessions one gateway holds.
pub fn gateway_commands(gateway_id: &str) -> String {
    format!("{PREFIX}:commands:gateway:{gateway_id}")
}

/// A `KEYS`/`SCAN` pattern matching every command stream (operators' and tests' inspection).
pub fn command_streams_pattern() -> String {
    format!("{PREFIX}:commands:*")
}

/// The session's current pairing QR `{code, expiresAt}`; expires with the code.
pub fn session_qr(org: &str, session_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}:qr")
}

/// The session's latest backfill job (a JSON document).
pub fn session_backfill(org: &str, session_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}:backfill")
}

/// One kind of the session's directory (`contacts`, `groups`): JID → JSON document.
pub fn session_directory(org: &str, session_id: &str, kind: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}:{kind}")
}

/// The JIDs of [`session_directory`], in a sorted set of equal scores: lexical order gives
/// stable cursor pagination while entries come and go.
pub fn session_directory_index(org: &str, session_id: &str, kind: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}:{kind}:index")
}

/// One message, sent or received (a JSON document), kept for the configured retention.
pub fn message(org: &str, message_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:message:{message_id}")
}

/// The file of a message sent with inline data: kept from acceptance until the message is sent,
/// failed or canceled. The key is this prefix and the message id, so the outbox's script can
/// check any message's.
pub fn message_upload(org: &str, message_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:upload:{message_id}")
}

/// The sizes of the inline files a session's queued messages hold (message id → bytes), to
/// bound what one session keeps in Redis.
pub fn session_uploads(org: &str, session_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}:uploads")
}

/// A message's media file as `GET …/media` answers it: cached with a TTL, within the
/// organization's cache budget ([`org_media_cache`]). The key is this prefix and the message
/// id, so the cache's script can evict by id.
pub fn message_media(org: &str, message_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:media:{message_id}")
}

/// The organization's cached files (message ids, scored by when cached), oldest evicted first.
pub fn org_media_cache(org: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:media-cache")
}

/// The sizes of the organization's cached files (message id → bytes), and their total (`:total`).
pub fn org_media_cache_sizes(org: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:media-cache:sizes")
}

pub fn org_media_cache_total(org: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:media-cache:total")
}

/// A fetch of a message's media from WhatsApp: `pending` while a daemon is asked, else why it
/// failed (JSON), for a few seconds.
pub fn message_media_fetch(org: &str, message_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:message:{message_id}:media-fetch")
}

/// The session's queued outbound messages, oldest first (a list of message ids): what the
/// session's daemon sends next, in order.
pub fn session_outbox(org: &str, session_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}:outbox")
}

/// The session's sends within the last hour (a sorted set: message id → when it was sent), so
/// its rate limits hold across daemon restarts and failovers.
pub fn session_sends(org: &str, session_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}:sends")
}

/// The session's messages both ways, kept for the retention: a sorted set of message ids (ULIDs)
/// with equal scores, so lexical order is time order and a page starts after any id.
pub fn session_messages(org: &str, session_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}:messages")
}

/// The session's messages in one chat (a JID), as [`session_messages`].
pub fn session_chat_messages(org: &str, session_id: &str, chat: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}:chat:{chat}:messages")
}

/// An inbound message already stored (chat, sender, WhatsApp id) → our message id: WhatsApp
/// delivers a message again when its acknowledgement was lost, and it must be logged once.
pub fn session_inbound(org: &str, session_id: &str, chat: &str, sender: &str, wa_message_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}:inbound:{chat}:{sender}:{wa_message_id}")
}

/// WhatsApp's id of a message of the session → our message id, to file acks and receipts and
/// to resolve replies and reactions. An outbound message's entry is written when accepted; an
/// inbound one's only if the id is not taken (a sender chooses its ids).
pub fn session_wa_message(org: &str, session_id: &str, wa_message_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}:wa:{wa_message_id}")
}

/// Whether a phone number is on WhatsApp, as a usync query told the session (`1` or `0`),
/// kept a while so a burst to one number asks WhatsApp once.
pub fn session_registered(org: &str, session_id: &str, jid: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}:registered:{jid}")
}

/// When the session last sent to each chat (a sorted set: chat → Unix ms), kept for the
/// minimum gap between two sends to one chat.
pub fn session_chat_sends(org: &str, session_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}:chat-sends")
}

/// An `Idempotency-Key` a client sent with a message (its SHA-256) → the message it created.
pub fn message_idempotency(org: &str, session_id: &str, key_hash: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}:idempotency:{key_hash}")
}

/// What the daemon answered to one command (`{ok, code?, error?}`), kept briefly so the function
/// that queued the command can wait for it.
pub fn command_result(org: &str, command_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:command:{command_id}")
}

/// The organization's durable event log (a Redis Stream).
pub fn org_events(org: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:events")
}

/// The pub/sub channel on which the organization's events are announced as they are logged.
pub fn org_events_channel(org: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:events:live")
}

/// A `PSUBSCRIBE` pattern for every organization's [`org_events_channel`].
pub fn all_events_channels() -> String {
    org_events_channel("*")
}

/// The organization whose [`org_events_channel`] this is.
pub fn org_of_events_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix(PREFIX)?.strip_prefix(":{org:")?.strip_suffix("}:events:live")
}

/// The organization's open event streams: stream id → when its slot lapses unless renewed.
pub fn org_streams(org: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:streams")
}

/// One caller's open event streams (the caller as the SHA-256 of its user id), as [`org_streams`].
pub fn caller_streams(org: &str, caller_hash: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:streams:caller:{caller_hash}")
}

/// Every open event stream of the deployment, as [`org_streams`].
pub fn all_streams() -> String {
    format!("{PREFIX}:streams")
}

/// The organization's requests with a file being read and stored (`shared::slots`): request
/// id → when its slot lapses.
pub fn org_large_requests(org: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:large-requests")
}

/// Every request with a file being read, deployment-wide, as [`org_large_requests`].
pub fn all_large_requests() -> String {
    format!("{PREFIX}:large-requests")
}

/// A fixed-window counter (`scope`, its subject, the window's number), expiring with the window.
pub fn rate_window(scope: &str, subject: &str, window: u64) -> String {
    format!("{PREFIX}:rate:{scope}:{subject}:{window}")
}

/// A pairing link's grant (one session of one organization), by the SHA-256 of its token;
/// expires with the link.
pub fn pairing_link(token_hash: &str) -> String {
    format!("{PREFIX}:pairing-link:{token_hash}")
}

/// The token hashes of the pairing links minted for a session and not expired yet, so they
/// can be revoked; expires with the newest of them.
pub fn session_pairing_links(org: &str, session_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}:pairing-links")
}

/// A stream token's grant, found by the token's SHA-256; deleted by its one use.
pub fn stream_token(token_hash: &str) -> String {
    format!("{PREFIX}:stream-token:{token_hash}")
}

/// Consumer group every daemon reads the command streams with.
pub const COMMAND_GROUP: &str = "daemons";

/// Present while the gateway's daemon is alive: it renews this key with a short expiry.
pub fn gateway_alive(gateway_id: &str) -> String {
    format!("{PREFIX}:gateway:{gateway_id}:alive")
}

/// Every gateway that ever announced itself, so live ones can find dead ones to adopt.
pub fn gateways() -> String {
    format!("{PREFIX}:gateways")
}

/// Held by the one daemon adopting what a dead gateway left behind.
pub fn gateway_adoption(gateway_id: &str) -> String {
    format!("{PREFIX}:gateway:{gateway_id}:adoption")
}

/// The sessions a gateway runs, so a restarted daemon resumes them.
pub fn gateway_sessions(gateway_id: &str) -> String {
    format!("{PREFIX}:gateway:{gateway_id}:sessions")
}

/// `<gatewayId> <fence>`: the gateway that runs the session and the fencing token it acquired
/// the lease with; expires unless its daemon renews it. In the row's slot, so taking the lease
/// and recording its token on the row are one script.
pub fn session_lease(org: &str, session_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}:lease")
}

/// A temporary ban WhatsApp put on the session's number (the row's `statusReason` for it, which
/// says when it lifts), until it lifts: read before every connect, whichever daemon connects.
pub fn session_ban(org: &str, session_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}:ban")
}

/// The simulator backend's remote control: tests and demos append phone-side actions here.
pub fn simulator_control() -> String {
    format!("{PREFIX}:simulator:control")
}

/// The simulated WhatsApp server's linked devices (device id → phone number).
pub fn simulator_linked_devices() -> String {
    format!("{PREFIX}:simulator:linked-devices")
}

/// The client a simulated device is logged in with right now; expires unless that client
/// refreshes it (a killed daemon's clients go offline within a second).
pub fn simulator_online(device_id: &str) -> String {
    format!("{PREFIX}:simulator:online:{device_id}")
}

/// Every copy of a message the simulated WhatsApp server delivered for a session (a resend is
/// encrypted anew and shown again, `copy` 2): one JSON record each, oldest first.
pub fn simulator_delivered() -> String {
    format!("{PREFIX}:simulator:delivered")
}

/// How many copies of each message id the simulated server delivered, per sending device.
pub fn simulator_copies(device_id: &str) -> String {
    format!("{PREFIX}:simulator:copies:{device_id}")
}

/// Phone numbers that are not on WhatsApp (a set): usync finds nothing, and a message to one is
/// acknowledged and delivered to nobody.
pub fn simulator_unregistered() -> String {
    format!("{PREFIX}:simulator:unregistered")
}

/// How many usync queries (is it on WhatsApp?) sessions made.
pub fn simulator_usync_queries() -> String {
    format!("{PREFIX}:simulator:usync-queries")
}

/// How the simulated server answers sends to a chat (a hash: chat JID → `forbidden`,
/// `encryption`, `not_logged_in`, `timeout`, or `ack:<code>`), until cleared.
pub fn simulator_refusals() -> String {
    format!("{PREFIX}:simulator:refusals")
}

/// Messages the simulated phones sent to one linked device that its client has not yet
/// acknowledged (a hash: control-stream entry id → JSON), delivered again at every login as
/// WhatsApp's server does.
pub fn simulator_inbound(device_id: &str) -> String {
    format!("{PREFIX}:simulator:inbound:{device_id}")
}

/// The chat states (typing, paused) sessions showed through the simulated server: one JSON
/// record each, oldest first.
pub fn simulator_chat_states() -> String {
    format!("{PREFIX}:simulator:chat-states")
}

/// The presence (`available`, `unavailable`) sessions announced through the simulated server,
/// the automatic ones a WhatsApp client sends at login included: one JSON record each, oldest first.
pub fn simulator_presence() -> String {
    format!("{PREFIX}:simulator:presence")
}

/// The read receipts sessions sent through the simulated server: one JSON record each, oldest first.
pub fn simulator_read_receipts() -> String {
    format!("{PREFIX}:simulator:read-receipts")
}

/// Every time the simulated server saw a second live client of one device (which replaces the
/// first): one JSON record each, newest first. A correct gateway never causes one.
pub fn simulator_replacements() -> String {
    format!("{PREFIX}:simulator:replacements")
}

/// While this key exists the simulated WhatsApp server is unreachable (tests set it with an expiry).
pub fn simulator_outage() -> String {
    format!("{PREFIX}:simulator:outage")
}

/// Held by the one daemon retrying a set-aside unlink (see the daemon's `unlinks`), so daemons
/// sharing a data directory do not retry it at once.
pub fn unlink_claim(store: &str) -> String {
    format!("{PREFIX}:unlink-claim:{store}")
}

/// An api-key's record, found by the SHA-256 of the key itself: the key is never stored.
pub fn api_key(key_hash: &str) -> String {
    format!("{PREFIX}:apikey:{key_hash}")
}

/// The organization's api-keys: key id → key hash, for listing and revoking by id.
pub fn org_api_keys(org: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:apikeys")
}

/// The cached JWKS document fetched from one URL.
pub fn jwks_cache(url: &str) -> String {
    format!("{PREFIX}:jwks:{}", crate::secret::sha256_hex(url))
}

/// Held for a short interval after a JWKS refetch, so unknown `kid`s cannot trigger a fetch storm.
pub fn jwks_refetch_guard(url: &str) -> String {
    format!("{PREFIX}:jwks-refetch:{}", crate::secret::sha256_hex(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_organizations_keys_share_one_cluster_slot() {
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
        assert_eq!(tag(&session("acme", "01J")), tag(&org_sessions("acme")));
        assert_eq!(tag(&org_sessions("acme")), tag(&org_api_keys("acme")));
        assert_eq!(tag(&org_sessions("acme")), tag(&org_session_counter("acme")));
        assert_eq!(tag(&org_sessions("acme")), tag(&org_events("acme")));
        assert_eq!(tag(&org_sessions("acme")), tag(&session_qr("acme", "01J")));
        assert_eq!(tag(&org_sessions("acme")), tag(&session_backfill("acme", "01J")));
        assert_eq!(tag(&org_sessions("acme")), tag(&session_directory_index("acme", "01J", "groups")));
        assert_eq!(tag(&org_sessions("acme")), tag(&session_lease("acme", "01J")));
        assert_eq!(tag(&org_sessions("acme")), tag(&message("acme", "01K")));
        assert_eq!(tag(&org_sessions("acme")), tag(&session_outbox("acme", "01J")));
        assert_eq!(tag(&org_sessions("acme")), tag(&session_sends("acme", "01J")));
        assert_eq!(tag(&org_sessions("acme")), tag(&session_wa_message("acme", "01J", "3EB0")));
        assert_eq!(tag(&org_sessions("acme")), tag(&session_messages("acme", "01J")));
        assert_eq!(tag(&org_sessions("acme")), tag(&session_chat_messages("acme", "01J", "62811@s.whatsapp.net")));
        assert_eq!(tag(&org_sessions("acme")), tag(&session_inbound("acme", "01J", "a@g.us", "b@lid", "3EB0")));
        assert_eq!(tag(&org_sessions("acme")), tag(&message_idempotency("acme", "01J", "ab")));
        assert_ne!(session("acme", "01J"), session("globex", "01J"));
    }
}

/// The simulated WhatsApp media servers: an uploaded file by its path.
pub fn simulator_media(path: &str) -> String {
    format!("{PREFIX}:simulator:media:{path}")
}

/// How many files sessions uploaded to the simulated media servers.
pub fn simulator_uploads() -> String {
    format!("{PREFIX}:simulator:uploads")
}

/// How many files sessions downloaded from the simulated media servers.
pub fn simulator_downloads() -> String {
    format!("{PREFIX}:simulator:downloads")
}
