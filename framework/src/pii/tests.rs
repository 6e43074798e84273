use std::collections::BTreeMap;

use proptest::prelude::*;

use super::cipher::{CipherError, Keyring, PiiMode};
use super::keyset::{Error, Keyset, RootKey};

fn root(byte: u8) -> RootKey {
    RootKey::from_bytes(&[byte; 32])
}

fn keyring(domains: &[&str]) -> (Keyset, Keyring) {
    let roots = [root(1)];
    let mut keyset = Keyset::new("dev");
    for domain in domains {
        keyset.add_key(domain, &roots);
    }
    let keyring = keyset.unlock("k.json".as_ref(), &roots).unwrap();
    (keyset, keyring)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn deterministic_is_equal_for_equal_values_and_round_trips(a in ".{0,40}", b in ".{0,40}") {
        let (_, keys) = keyring(&["location"]);
        let ea = keys.encrypt("location", PiiMode::Deterministic, a.as_bytes()).unwrap();
        let ea2 = keys.encrypt("location", PiiMode::Deterministic, a.as_bytes()).unwrap();
        let eb = keys.encrypt("location", PiiMode::Deterministic, b.as_bytes()).unwrap();
        prop_assert_eq!(&ea, &ea2);
        prop_assert_eq!(a == b, ea == eb);
        prop_assert_eq!(keys.decrypt("location", &ea).unwrap(), a.as_bytes());
        prop_assert_eq!(keys.decrypt_any(&eb).unwrap(), b.as_bytes());
    }

    #[test]
    fn randomized_differs_each_time_and_round_trips(a in ".{0,40}") {
        let (_, keys) = keyring(&["free_text"]);
        let e1 = keys.encrypt("free_text", PiiMode::Randomized, a.as_bytes()).unwrap();
        let e2 = keys.encrypt("free_text", PiiMode::Randomized, a.as_bytes()).unwrap();
        prop_assert_ne!(&e1, &e2);
        prop_assert_eq!(keys.decrypt("free_text", &e1).unwrap(), a.as_bytes());
        prop_assert_eq!(keys.decrypt("free_text", &e2).unwrap(), a.as_bytes());
    }
}

#[test]
fn a_value_of_one_domain_does_not_decrypt_in_another() {
    let (keyset, keys) = keyring(&["a", "b"]);
    let sealed = keys.encrypt("a", PiiMode::Deterministic, b"01037").unwrap();
    // Domain b holds no key with a's id.
    assert!(matches!(
        keys.decrypt("b", &sealed),
        Err(CipherError::UnknownKey { .. })
    ));
    // Same key material under another domain name: the associated data still differs.
    let mut renamed = keyset.clone();
    let a = renamed.domains.remove("a").unwrap();
    renamed.domains.insert("c".into(), a);
    assert!(renamed.unlock("k.json".as_ref(), &[root(1)]).is_err());
    assert!(matches!(
        keys.decrypt("a", "bm90IGEgY2lwaGVydGV4dA"),
        Err(CipherError::NotCiphertext { .. } | CipherError::UnknownKey { .. })
    ));
}

#[test]
fn rotation_encrypts_with_the_new_key_and_old_values_still_decrypt() {
    let roots = [root(1)];
    let mut keyset = Keyset::new("dev");
    let first = keyset.add_key("location", &roots);
    let before = keyset.unlock("k.json".as_ref(), &roots).unwrap();
    let old = before
        .encrypt("location", PiiMode::Deterministic, b"Sao Paulo")
        .unwrap();
    let second = keyset.add_key("location", &roots);
    assert_ne!(first, second);
    let after = keyset.unlock("k.json".as_ref(), &roots).unwrap();
    assert_eq!(after.primary("location"), Some(second));
    let new = after
        .encrypt("location", PiiMode::Deterministic, b"Sao Paulo")
        .unwrap();
    assert_ne!(old, new, "new writes use the new key id");
    assert_eq!(after.decrypt("location", &old).unwrap(), b"Sao Paulo");
    assert_eq!(after.decrypt("location", &new).unwrap(), b"Sao Paulo");
}

#[test]
fn a_keyset_wrapped_under_two_roots_opens_with_either_and_not_with_a_third() {
    let (a, b, c) = (root(1), root(2), root(3));
    let mut keyset = Keyset::new("prod");
    keyset.add_key("location", std::slice::from_ref(&a));
    let added = keyset
        .rewrap("k.json".as_ref(), std::slice::from_ref(&a), &b)
        .unwrap();
    assert_eq!(added, 1);
    let by_a = keyset.unlock("k.json".as_ref(), &[a]).unwrap();
    let sealed = by_a
        .encrypt("location", PiiMode::Randomized, b"Curitiba")
        .unwrap();
    // The second environment holds only b.
    let by_b = keyset.unlock("k.json".as_ref(), &[b]).unwrap();
    assert_eq!(by_b.decrypt("location", &sealed).unwrap(), b"Curitiba");
    let err = keyset.unlock("k.json".as_ref(), &[c]).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Locked { .. }), "{text}");
    assert!(
        text.contains("domain `location`") && text.contains("k.json"),
        "{text}"
    );
    // Dropping a root leaves the other one working.
    assert_eq!(keyset.drop_root(root(1).fingerprint()), 1);
    assert!(keyset.unlock("k.json".as_ref(), &[root(1)]).is_err());
    assert!(keyset.unlock("k.json".as_ref(), &[root(2)]).is_ok());
}

#[test]
fn errors_and_files_never_hold_key_material() {
    let (key, text) = RootKey::generate();
    let mut keyset = Keyset::new("dev");
    keyset.add_key("location", std::slice::from_ref(&key));
    let file = serde_json::to_string(&keyset).unwrap();
    assert!(!file.contains(&text));
    let err = RootKey::parse("not base64!", "FRAMEWORK_ROOT_KEY", None).unwrap_err();
    assert!(!err.to_string().contains("not base64!"), "{err}");
    let locked = keyset
        .unlock("k.json".as_ref(), &[root(9)])
        .unwrap_err()
        .to_string();
    assert!(!locked.contains(&text));
    assert!(format!("{key:?}").contains(key.fingerprint()));
}

#[test]
fn open_makes_a_dev_keyset_once_and_refuses_a_missing_prod_one() {
    let dir = tempfile::tempdir().unwrap();
    let domains = BTreeMap::from([("location".to_owned(), vec!["customers".to_owned()])]);
    let dev = super::KeysetOptions {
        environment: "dev".into(),
        path: dir.path().join("keys/dev.keyset.json"),
    };
    let roots = [root(4)];
    let (made, added) = super::keyset::ensure(&dev, domains.keys(), &roots).unwrap();
    assert_eq!(added, ["location"]);
    let (again, added) = super::keyset::ensure(&dev, domains.keys(), &roots).unwrap();
    assert!(added.is_empty());
    assert_eq!(
        made.domains["location"].primary,
        again.domains["location"].primary
    );
    let prod = super::KeysetOptions {
        environment: "prod".into(),
        path: dir.path().join("keys/prod.keyset.json"),
    };
    // No prod keyset: an error naming the command that makes it (or, without a root key in
    // this environment, the missing root key).
    let err = super::keyset::open(&prod, &domains)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("framework keys create --env prod")
            || err.contains("no root key for environment `prod`"),
        "{err}"
    );
    assert!(!dir.path().join("keys/prod.keyset.json").exists());
}

/// A keyring whose subject keys live in `dir` (as a second process would open the same keyset).
fn keyring_at(keyset: &Keyset, dir: &std::path::Path) -> Keyring {
    keyset
        .unlock(&dir.join("dev.keyset.json"), &[root(1)])
        .unwrap()
}

#[test]
fn a_forgotten_subject_no_longer_decrypts_and_the_others_still_do() {
    let dir = tempfile::tempdir().unwrap();
    let (keyset, _) = keyring(&["contact"]);
    let keys = keyring_at(&keyset, dir.path());
    let ana = keys
        .encrypt_for_subject("contact", "ana", b"ana@example.com")
        .unwrap();
    let ana2 = keys
        .encrypt_for_subject("contact", "ana", b"+55 11 5555")
        .unwrap();
    let bia = keys
        .encrypt_for_subject("contact", "bia", b"bia@example.com")
        .unwrap();
    keys.sync_subjects().unwrap();
    // Randomized: the same value twice differs; another process reads the key from the file.
    assert_ne!(
        ana,
        keys.encrypt_for_subject("contact", "ana", b"ana@example.com")
            .unwrap()
    );
    let reader = keyring_at(&keyset, dir.path());
    assert_eq!(reader.decrypt_any(&ana).unwrap(), b"ana@example.com");
    assert_eq!(reader.decrypt("contact", &ana2).unwrap(), b"+55 11 5555");
    // The file names no subject in clear: each line is a hashed reference (hex), the key's id
    // and the wrapped key (base64 of random bytes, which may spell any word by chance).
    let file =
        std::fs::read_to_string(dir.path().join("dev.keyset.subjects/contact.jsonl")).unwrap();
    for line in file.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        let mut fields: Vec<&String> = entry.as_object().unwrap().keys().collect();
        fields.sort();
        assert_eq!(fields, ["key_id", "ref", "wrapped"], "{line}");
        let reference = entry["ref"].as_str().unwrap();
        assert!(
            reference.len() == 32 && reference.bytes().all(|b| b.is_ascii_hexdigit()),
            "{line}"
        );
        assert!(entry["key_id"].is_u64(), "{line}");
    }
    assert_eq!(file.lines().count(), 2, "{file}");

    let forgetter = keyring_at(&keyset, dir.path());
    let erased = forgetter
        .subjects
        .forget("contact", &forgetter.domains["contact"], "ana")
        .unwrap();
    assert_eq!(erased, 1);
    // Every process that looks again: gone for ana (the reader's cache too), kept for bia.
    for keys in [&reader, &keys, &keyring_at(&keyset, dir.path())] {
        assert!(matches!(
            keys.decrypt("contact", &ana),
            Err(CipherError::Forgotten { .. })
        ));
        assert!(keys.is_forgotten(&ana2));
        assert!(keys.decrypt_any(&ana).is_none());
        assert_eq!(keys.decrypt("contact", &bia).unwrap(), b"bia@example.com");
        assert!(!keys.is_forgotten(&bia));
    }
    // A writer that held ana's key before the forget makes a new one, written to the new file.
    let again = keys
        .encrypt_for_subject("contact", "ana", b"ana@new.example")
        .unwrap();
    keys.sync_subjects().unwrap();
    assert_eq!(
        keyring_at(&keyset, dir.path())
            .decrypt("contact", &again)
            .unwrap(),
        b"ana@new.example"
    );
    assert!(reader.decrypt_any(&ana).is_none());
}

#[test]
fn two_writers_meeting_a_new_subject_at_once_both_keep_their_values_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (keyset, _) = keyring(&["contact"]);
    let (a, b) = (
        keyring_at(&keyset, dir.path()),
        keyring_at(&keyset, dir.path()),
    );
    // Each has the file loaded before the other writes: two keys for one subject.
    a.encrypt_for_subject("contact", "dan", b"x").unwrap();
    b.encrypt_for_subject("contact", "dan", b"x").unwrap();
    let from_a = a.encrypt_for_subject("contact", "cai", b"from a").unwrap();
    let from_b = b.encrypt_for_subject("contact", "cai", b"from b").unwrap();
    a.sync_subjects().unwrap();
    b.sync_subjects().unwrap();
    let reader = keyring_at(&keyset, dir.path());
    assert_eq!(reader.decrypt_any(&from_a).unwrap(), b"from a");
    assert_eq!(reader.decrypt_any(&from_b).unwrap(), b"from b");
    // Forget erases both.
    let erased = reader
        .subjects
        .forget("contact", &reader.domains["contact"], "cai")
        .unwrap();
    assert_eq!(erased, 2);
    assert!(reader.is_forgotten(&from_a) && reader.is_forgotten(&from_b));
}

#[test]
fn a_keyring_without_a_keyset_has_no_subject_keys() {
    let keys = Keyring::default();
    assert!(keys.encrypt_for_subject("contact", "x", b"v").is_err());
}

/// Processes starting at once on a fresh laptop all make its root key: each ends up with the
/// one key the file holds, never a half-written file (`not base64 of 32 bytes`).
#[test]
fn root_keys_made_at_once_are_one_key_and_never_a_half_written_file() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20 {
        let path = dir.path().join(format!("{round}/dev.key"));
        let barrier = std::sync::Barrier::new(8);
        let fingerprints: Vec<String> = std::thread::scope(|scope| {
            let makers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        super::keyset::make_root_file(&path).map(|k| k.fingerprint().to_owned())
                    })
                })
                .collect();
            makers
                .into_iter()
                .map(|m| m.join().unwrap())
                .map(|made| made.unwrap_or_else(|e| panic!("round {round}: {e}")))
                .collect()
        });
        let stored = super::keyset::root_keys_from_file(&path).unwrap();
        assert_eq!(stored.len(), 1, "round {round}: one key in the file");
        assert!(
            fingerprints.iter().all(|f| f == stored[0].fingerprint()),
            "round {round}: every maker uses the stored key: {fingerprints:?}"
        );
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["dev.key"], "round {round}: no temporary file left");
    }
}
