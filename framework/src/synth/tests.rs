use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::generate;

/// The header lines of the real files, byte for byte.
const HEADERS: [(&str, &str); 9] = [
    (
        "olist_orders_dataset.csv",
        "order_id,customer_id,order_status,order_purchase_timestamp,order_approved_at,\
         order_delivered_carrier_date,order_delivered_customer_date,order_estimated_delivery_date",
    ),
    (
        "olist_order_items_dataset.csv",
        "order_id,order_item_id,product_id,seller_id,shipping_limit_date,price,freight_value",
    ),
    (
        "olist_order_payments_dataset.csv",
        "\"order_id\",\"payment_sequential\",\"payment_type\",\"payment_installments\",\
         \"payment_value\"",
    ),
    (
        "olist_order_reviews_dataset.csv",
        "review_id,order_id,review_score,review_comment_title,review_comment_message,\
         review_creation_date,review_answer_timestamp",
    ),
    (
        "olist_customers_dataset.csv",
        "customer_id,customer_unique_id,customer_zip_code_prefix,customer_city,customer_state",
    ),
    (
        "olist_geolocation_dataset.csv",
        "geolocation_zip_code_prefix,geolocation_lat,geolocation_lng,geolocation_city,\
         geolocation_state",
    ),
    (
        "olist_products_dataset.csv",
        "\"product_id\",\"product_category_name\",\"product_name_lenght\",\
         \"product_description_lenght\",\"product_photos_qty\",\"product_weight_g\",\
         \"product_length_cm\",\"product_height_cm\",\"product_width_cm\"",
    ),
    (
        "olist_sellers_dataset.csv",
        "\"seller_id\",\"seller_zip_code_prefix\",\"seller_city\",\"seller_state\"",
    ),
    (
        "product_category_name_translation.csv",
        "\u{feff}product_category_name,product_category_name_english",
    ),
];

/// Every data record of a file (header skipped), as strings.
fn records(dir: &Path, name: &str) -> Vec<Vec<String>> {
    let mut r = csv::ReaderBuilder::new()
        .from_path(dir.join(name))
        .expect(name);
    r.records()
        .map(|rec| rec.expect(name).iter().map(str::to_owned).collect())
        .collect()
}

/// The set of values of column `col`.
fn column(rows: &[Vec<String>], col: usize) -> HashSet<String> {
    rows.iter().map(|r| r[col].clone()).collect()
}

fn is_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_ts(s: &str) -> bool {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").is_ok() && s.len() == 19
}

fn tiny() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    generate(0.01, 42, dir.path()).unwrap();
    dir
}

#[test]
fn headers_match_the_real_files() {
    let dir = tiny();
    for (name, header) in HEADERS {
        let bytes = std::fs::read(dir.path().join(name)).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text.split('\n').next().unwrap(), header, "{name}");
    }
    let names: HashSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let expected = HEADERS
        .iter()
        .map(|(n, _)| *n)
        .chain([super::profiles::FILE]);
    assert_eq!(names, expected.map(str::to_owned).collect());
}

#[test]
fn stats_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let stats = generate(0.01, 7, dir.path()).unwrap();
    let rows: HashMap<&str, u64> = stats.files.iter().map(|(n, r)| (n.as_str(), *r)).collect();
    assert_eq!(rows.len(), 10);
    assert_eq!(rows["olist_orders_dataset.csv"], 994);
    assert_eq!(rows["olist_customers_dataset.csv"], 994);
    assert_eq!(rows["olist_sellers_dataset.csv"], 50);
    assert_eq!(rows["olist_products_dataset.csv"], 330);
    assert_eq!(rows["product_category_name_translation.csv"], 71);
    let items = rows["olist_order_items_dataset.csv"];
    assert!((1050..1250).contains(&items), "items {items}");
    let geo = rows["olist_geolocation_dataset.csv"];
    assert_eq!(geo, 10_002);
    for (name, n) in &stats.files {
        if name == super::profiles::FILE {
            let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
            assert_eq!(text.lines().count() as u64, *n, "{name}");
        } else if name != "product_category_name_translation.csv" {
            assert_eq!(records(dir.path(), name).len() as u64, *n, "{name}");
        }
    }
}

#[test]
fn key_relations_hold() {
    let dir = tiny();
    let d = dir.path();
    let orders = records(d, "olist_orders_dataset.csv");
    let items = records(d, "olist_order_items_dataset.csv");
    let payments = records(d, "olist_order_payments_dataset.csv");
    let reviews = records(d, "olist_order_reviews_dataset.csv");
    let customers = records(d, "olist_customers_dataset.csv");
    let products = records(d, "olist_products_dataset.csv");
    let sellers = records(d, "olist_sellers_dataset.csv");
    let (order_ids, customer_ids) = (column(&orders, 0), column(&customers, 0));
    let (product_ids, seller_ids) = (column(&products, 0), column(&sellers, 0));
    assert_eq!(order_ids.len(), orders.len(), "order ids are unique");
    assert_eq!(
        customer_ids.len(),
        customers.len(),
        "customer ids are unique"
    );
    for o in &orders {
        assert!(is_id(&o[0]) && is_id(&o[1]), "{o:?}");
        assert!(customer_ids.contains(&o[1]), "order's customer exists");
        assert!(
            is_ts(&o[3]) && is_ts(&o[7]) && o[7].ends_with("00:00:00"),
            "{o:?}"
        );
    }
    for i in &items {
        assert!(order_ids.contains(&i[0]) && product_ids.contains(&i[2]));
        assert!(seller_ids.contains(&i[3]) && is_ts(&i[4]));
        for money in [&i[5], &i[6]] {
            let (_, frac) = money.split_once('.').expect("a decimal point");
            assert!((1..=2).contains(&frac.len()) && (frac.len() == 1 || !frac.ends_with('0')));
        }
    }
    for p in &payments {
        assert!(order_ids.contains(&p[0]), "payment's order exists");
        assert!(["credit_card", "boleto", "voucher", "debit_card"].contains(&p[2].as_str()));
        assert_eq!(p[4].split_once('.').map(|(_, f)| f.len()), Some(2));
    }
    for r in &reviews {
        assert!(order_ids.contains(&r[1]), "review's order exists");
        assert!(r[5].ends_with(" 00:00:00") && is_ts(&r[6]));
        assert!(("1"..="5").contains(&r[2].as_str()));
    }
    // Orders without items exist only for canceled / unavailable / invoiced orders.
    let with_items = column(&items, 0);
    for o in orders.iter().filter(|o| !with_items.contains(&o[0])) {
        assert!(
            ["canceled", "unavailable", "invoiced"].contains(&o[2].as_str()),
            "{o:?}"
        );
    }
    assert!(
        orders
            .iter()
            .any(|o| o[2] == "delivered" && o[6].is_empty())
    );
    let cats = column(&products, 1);
    for c in [
        "",
        "pc_gamer",
        "portateis_cozinha_e_preparadores_de_alimentos",
    ] {
        assert!(cats.contains(c), "category {c:?}");
    }
}

#[test]
fn quirks_of_the_real_files() {
    let dir = tiny();
    let d = dir.path();
    let reviews = records(d, "olist_order_reviews_dataset.csv");
    assert!(
        reviews.iter().any(|r| r[4].contains('\n')),
        "a message with a line break"
    );
    assert!(
        reviews.iter().any(|r| r[4].contains(',')),
        "a message with a comma"
    );
    assert!(reviews.iter().any(|r| r[3].is_empty() && r[4].is_empty()));
    assert!(reviews.iter().any(|r| !r[4].is_ascii()), "accents");
    // Partial quoting: values starting with a digit quoted, others bare; zips keep 5 digits.
    let payments = std::fs::read_to_string(d.join("olist_order_payments_dataset.csv")).unwrap();
    for line in payments.lines().skip(1) {
        let digit = line.trim_start_matches('"').as_bytes()[0].is_ascii_digit();
        assert_eq!(line.starts_with('"'), digit, "{line}");
    }
    let sellers = std::fs::read_to_string(d.join("olist_sellers_dataset.csv")).unwrap();
    for line in sellers.lines().skip(1) {
        let zip = line.split(',').nth(1).unwrap();
        assert!(
            zip.len() == 7 && zip.starts_with('"') && zip.ends_with('"'),
            "{line}"
        );
    }
    // Pandas style: zips lose their leading zeros.
    for c in records(d, "olist_customers_dataset.csv") {
        assert!(
            !c[2].starts_with('0') && (4..=5).contains(&c[2].len()),
            "{c:?}"
        );
    }
    let bytes = std::fs::read(d.join("product_category_name_translation.csv")).unwrap();
    assert!(bytes.starts_with(b"\xef\xbb\xbf") && !bytes.ends_with(b"\n"));
}

#[test]
fn same_seed_same_bytes() {
    let (a, b) = (tiny(), tiny());
    let c = tempfile::tempdir().unwrap();
    generate(0.01, 43, c.path()).unwrap();
    for (name, _) in HEADERS {
        let read = |d: &tempfile::TempDir| std::fs::read(d.path().join(name)).unwrap();
        assert!(read(&a) == read(&b), "{name} differs between two runs");
        if name != "product_category_name_translation.csv" {
            assert!(read(&a) != read(&c), "{name} ignores the seed");
        }
    }
}

#[test]
fn fractional_scales_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let stats = generate(0.00037, 1, dir.path()).unwrap();
    assert_eq!(stats.files.len(), 10);
    assert!(stats.files.iter().all(|(_, n)| *n > 0));
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(generate(bad, 1, dir.path()).is_err());
    }
}

/// The sample's profiles feed is what `profiles::derive` makes of the sample's customers
/// (`FRAMEWORK_WRITE_SAMPLE=1` rewrites it after a change to the generator).
#[test]
fn the_samples_profiles_are_derived_from_its_customers() {
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/olist_sample");
    let dir = tempfile::tempdir().unwrap();
    let n = super::profiles::derive(&sample.join("olist_customers_dataset.csv"), 42, dir.path())
        .unwrap();
    let made = std::fs::read(dir.path().join(super::profiles::FILE)).unwrap();
    let committed = sample.join(super::profiles::FILE);
    if std::env::var_os("FRAMEWORK_WRITE_SAMPLE").is_some() {
        std::fs::write(&committed, &made).unwrap();
    }
    assert_eq!(n, 2970, "one profile per customer_unique_id of the sample");
    assert!(
        std::fs::read(&committed).unwrap() == made,
        "{} is not what the generator makes; rerun with FRAMEWORK_WRITE_SAMPLE=1",
        committed.display()
    );
    let first: serde_json::Value =
        serde_json::from_slice(made.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(
        first["address"]["zip_code_prefix"].as_str().map(str::len),
        Some(5)
    );
}
