//! `customer_profiles.jsonl`: a nested JSON Lines feed derived from a customers file, one
//! profile per `customer_unique_id` (the last row of a person wins), as a CRM export would
//! send it: the address as an object, contacts as a list of objects, preferences with a list
//! inside, free tags. Olist has no such feed; this one is derived from the customers' real
//! ids and places so that its joins to them hold. Everything not taken from the customers file
//! (contacts, preferences, tags, times) is a function of the person's id and `seed`, so the
//! same input always gives the same bytes.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;

use serde::Serialize;

use super::util::{DAY, create, splitmix};

/// The feed's file name.
pub const FILE: &str = "customer_profiles.jsonl";

/// Writes [`FILE`] into `out` from the customers CSV at `customers`; returns the profiles written.
pub fn derive(customers: &Path, seed: u64, out: &Path) -> std::io::Result<u64> {
    let mut reader = csv::Reader::from_path(customers)?;
    let header = reader.headers()?.clone();
    let at = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: no column `{name}`", customers.display()),
            )
        })
    };
    let (uid, zip, city, state) = (
        at("customer_unique_id")?,
        at("customer_zip_code_prefix")?,
        at("customer_city")?,
        at("customer_state")?,
    );
    let mut order: Vec<String> = Vec::new();
    let mut people: HashMap<String, [String; 3]> = HashMap::new();
    for row in reader.records() {
        let row = row?;
        let id = row[uid].to_owned();
        let place = [
            format!("{:0>5}", &row[zip]),
            row[city].to_owned(),
            row[state].to_owned(),
        ];
        if people.insert(id.clone(), place).is_none() {
            order.push(id);
        }
    }
    let mut w = create(out, FILE)?;
    for id in &order {
        let line = profile(id, &people[id], seed);
        serde_json::to_writer(&mut w, &line)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(order.len() as u64)
}

#[derive(Serialize)]
struct Profile<'a> {
    customer_unique_id: &'a str,
    updated_at: String,
    address: Address<'a>,
    contacts: Vec<Contact>,
    preferences: Option<Preferences>,
    tags: Vec<&'static str>,
}

#[derive(Serialize)]
struct Address<'a> {
    zip_code_prefix: &'a str,
    city: Option<&'a str>,
    state: &'a str,
}

#[derive(Serialize)]
struct Contact {
    kind: &'static str,
    value: String,
    verified: bool,
}

#[derive(Serialize)]
struct Preferences {
    newsletter: bool,
    channels: Vec<&'static str>,
}

/// One person's profile.
fn profile<'a>(id: &'a str, [zip, city, state]: &'a [String; 3], seed: u64) -> Profile<'a> {
    let h = splitmix(
        seed ^ id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        }),
    );
    let bit = |n: u32| (h >> n) & 1 == 1;
    // Updated some time in 2018.
    let updated = 1_514_764_800 + (h % (365 * DAY as u64)) as i64;
    let updated_at = chrono::DateTime::from_timestamp(updated, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut contacts = vec![Contact {
        kind: "email",
        value: format!("{}@example.com", &id[..id.len().min(10)]),
        verified: bit(1),
    }];
    if bit(2) {
        contacts.push(Contact {
            kind: "phone",
            value: format!(
                "+55 {:02} 9{:04}-{:04}",
                11 + (h >> 8) % 80,
                (h >> 16) % 10_000,
                (h >> 32) % 10_000
            ),
            verified: bit(3),
        });
    }
    if bit(4) && bit(5) && bit(6) {
        // About one in eight has no contact on file.
        contacts.clear();
    }
    let mut channels = vec!["email"];
    if bit(7) {
        channels.push("sms");
    }
    let mut tags = Vec::new();
    if bit(11) {
        tags.push("newsletter_signup");
    }
    if bit(12) && bit(13) {
        tags.push("vip");
    }
    Profile {
        customer_unique_id: id,
        updated_at,
        address: Address {
            zip_code_prefix: zip,
            // About one in eight without a city.
            city: (!(bit(14) && bit(15) && bit(16))).then_some(city.as_str()),
            state,
        },
        contacts,
        // About one in four without preferences.
        preferences: (!(bit(9) && bit(10))).then_some(Preferences {
            newsletter: bit(8),
            channels,
        }),
        tags,
    }
}
