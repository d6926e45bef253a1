//! Session-ticket keys that rotate on a schedule and cross binary upgrades, so a client that
//! resumed its session before an upgrade resumes it after.
//!
//! rustls's own ticketer keeps its keys to itself; this one is the same construction with keys
//! we can hand over. A ticket is `key id (16) | nonce (12) | AES-256-GCM(state) | tag (16)`,
//! the key id also authenticated. Two keys live at a time: the current one encrypts, the
//! previous one still decrypts. Every `rotation` the current key becomes the previous one and
//! a fresh random key the current; a key older than two periods is erased (its tickets are
//! refused, and the client does a full handshake). Creation times are wall-clock seconds, so a
//! new generation that inherits the keys rotates them on the same schedule.
//!
//! The keys cross an upgrade in the handover channel (`lifecycle::Carry`, a pipe readable only
//! by the two processes), never in a file or the environment.

use std::sync::{PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

const ID_LEN: usize = 16;
const SECRET_LEN: usize = 32;

/// The ticket keys of this process, shared by every handshake.
pub(crate) struct TicketKeys {
    rotation: Duration,
    keys: RwLock<Keys>,
    random: SystemRandom,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("TicketKeys")
            .field("rotation", &self.rotation)
            .finish_non_exhaustive()
    }
}

struct Keys {
    current: Key,
    previous: Option<Key>,
}

struct Key {
    id: [u8; ID_LEN],
    secret: [u8; SECRET_LEN],
    /// Seconds since the Unix epoch.
    created: u64,
    aead: LessSafeKey,
}

/// How keys cross an upgrade: one line of JSON.
#[derive(Serialize, Deserialize)]
struct Exported {
    keys: Vec<ExportedKey>,
}

#[derive(Serialize, Deserialize)]
struct ExportedKey {
    id: Vec<u8>,
    secret: Vec<u8>,
    created: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("the system random number generator failed")]
    Random,
}

impl Key {
    fn new(id: [u8; ID_LEN], secret: [u8; SECRET_LEN], created: u64) -> Key {
        let unbound = UnboundKey::new(&AES_256_GCM, &secret)
            .expect("an AES-256 key is 32 bytes, as SECRET_LEN");
        Key {
            id,
            secret,
            created,
            aead: LessSafeKey::new(unbound),
        }
    }

    fn random(random: &SystemRandom, now: u64) -> Result<Key, TicketError> {
        let mut id = [0; ID_LEN];
        let mut secret = [0; SECRET_LEN];
        random.fill(&mut id).map_err(|_| TicketError::Random)?;
        random.fill(&mut secret).map_err(|_| TicketError::Random)?;
        Ok(Key::new(id, secret, now))
    }

    fn from_exported(exported: &ExportedKey) -> Option<Key> {
        Some(Key::new(
            exported.id.as_slice().try_into().ok()?,
            exported.secret.as_slice().try_into().ok()?,
            exported.created,
        ))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl TicketKeys {
    /// Keys that rotate every `rotation`, starting from `inherited` (the previous
    /// generation's export) when it is given and still good, else from fresh random ones.
    pub(crate) fn new(
        rotation: Duration,
        inherited: Option<&str>,
    ) -> Result<TicketKeys, TicketError> {
        let random = SystemRandom::new();
        let now = unix_now();
        let keys = match inherited.and_then(|payload| Self::adopt(payload, now, rotation)) {
            Some(keys) => keys,
            None => Keys {
                current: Key::random(&random, now)?,
                previous: None,
            },
        };
        let keys = TicketKeys {
            rotation,
            keys: RwLock::new(keys),
            random,
        };
        keys.rotate_if_due(now)?;
        Ok(keys)
    }

    /// The previous generation's keys, newest first, if any is still usable.
    fn adopt(payload: &str, now: u64, rotation: Duration) -> Option<Keys> {
        let Ok(exported) = serde_json::from_str::<Exported>(payload) else {
            tracing::warn!("ignoring malformed TLS ticket keys from the previous generation");
            return None;
        };
        let mut keys: Vec<Key> = exported
            .keys
            .iter()
            .filter_map(Key::from_exported)
            .filter(|key| !expired(key, now, rotation))
            .collect();
        keys.sort_by_key(|key| std::cmp::Reverse(key.created));
        let mut keys = keys.into_iter();
        let current = keys.next()?;
        tracing::info!("TLS ticket keys taken over from the previous generation");
        Some(Keys {
            current,
            previous: keys.next(),
        })
    }

    /// The keys for the next generation: one line, secret, for the handover pipe only.
    pub(crate) fn export(&self) -> String {
        let keys = self.read();
        let exported = Exported {
            keys: std::iter::once(&keys.current)
                .chain(keys.previous.as_ref())
                .map(|key| ExportedKey {
                    id: key.id.to_vec(),
                    secret: key.secret.to_vec(),
                    created: key.created,
                })
                .collect(),
        };
        serde_json::to_string(&exported).expect("ticket keys always serialize")
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn rotation_secs(&self) -> u64 {
        self.rotation.as_secs().max(1)
    }

    /// Replaces the current key once it is a period old, and erases keys two periods old.
    fn rotate_if_due(&self, now: u64) -> Result<(), TicketError> {
        if now < self.read().current.created + self.rotation_secs() {
            return Ok(());
        }
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        // Another handshake may have rotated meanwhile.
        if now < keys.current.created + self.rotation_secs() {
            return Ok(());
        }
        let fresh = Key::random(&self.random, now)?;
        let old = std::mem::replace(&mut keys.current, fresh);
        keys.previous = (!expired(&old, now, self.rotation)).then_some(old);
        Ok(())
    }
}

/// A key stops decrypting two periods after it was made.
fn expired(key: &Key, now: u64, rotation: Duration) -> bool {
    now >= key.created + 2 * rotation.as_secs().max(1)
}

impl rustls::server::ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.rotation.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.rotate_if_due(unix_now()).ok()?;
        let mut nonce = [0; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let keys = self.read();
        let key = &keys.current;
        let mut sealed = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.id),
                &mut sealed,
            )
            .ok()?;
        let mut ticket = Vec::with_capacity(ID_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&key.id);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        // Attacker-controlled input: every length is checked, nothing panics.
        let (id, rest) = cipher.split_at_checked(ID_LEN)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let now = unix_now();
        let keys = self.read();
        let key = std::iter::once(&keys.current)
            .chain(keys.previous.as_ref())
            .find(|key| key.id == id && !expired(key, now, self.rotation))?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(id), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use rustls::server::ProducesTickets;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_ticket_opens_with_the_keys_a_next_generation_inherits() {
        let old = TicketKeys::new(HOUR, None).expect("keys");
        let ticket = old.encrypt(b"session state").expect("encrypt");
        assert_eq!(old.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));

        let new = TicketKeys::new(HOUR, Some(&old.export())).expect("keys");
        assert_eq!(new.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));

        let stranger = TicketKeys::new(HOUR, None).expect("keys");
        assert_eq!(stranger.decrypt(&ticket), None);
        let garbage = TicketKeys::new(HOUR, Some("not json")).expect("keys");
        assert_eq!(garbage.decrypt(&ticket), None);
    }

    #[test]
    fn a_tampered_or_short_ticket_is_refused() {
        let keys = TicketKeys::new(HOUR, None).expect("keys");
        let mut ticket = keys.encrypt(b"state").expect("encrypt");
        let last = ticket.len() - 1;
        ticket[last] ^= 1;
        assert_eq!(keys.decrypt(&ticket), None);
        assert_eq!(keys.decrypt(&ticket[..ID_LEN + 3]), None);
        assert_eq!(keys.decrypt(&[]), None);
    }

    #[test]
    fn rotation_keeps_one_previous_key_and_erases_older_ones() {
        let keys = TicketKeys::new(HOUR, None).expect("keys");
        let made = keys.read().current.created;
        let ticket = keys.encrypt(b"state").expect("encrypt");

        keys.rotate_if_due(made + 3600).expect("rotate");
        assert_eq!(keys.decrypt(&ticket).as_deref(), Some(&b"state"[..]));

        keys.rotate_if_due(made + 7200).expect("rotate");
        assert_eq!(keys.decrypt(&ticket), None, "two periods old");
    }

    #[test]
    fn inherited_keys_past_their_life_are_dropped() {
        let old = TicketKeys::new(HOUR, None).expect("keys");
        old.keys.write().expect("lock").current.created -= 2 * 3600;
        let ticket = old.encrypt(b"state").expect("encrypt");
        // `encrypt` rotated: the expired key is gone and the ticket is from a fresh one.
        let new = TicketKeys::new(HOUR, Some(&old.export())).expect("keys");
        assert_eq!(new.decrypt(&ticket).as_deref(), Some(&b"state"[..]));
        assert_eq!(new.read().previous.as_ref().map(|key| key.created), None);
    }
}
