//! Sellers, products and the category translation file.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use rand::Rng;

use super::places::{CITIES, Places, state_name, zip_in};
use super::util::{
    Row, create, hex_id, lognormal, normal, skewed, stream, weighted, write_quoted_header,
};

/// The real translation file (Olist, CC BY-NC-SA 4.0), byte for byte: UTF-8 BOM, no final newline.
pub(crate) const TRANSLATION: &[u8] = include_bytes!("product_category_name_translation.csv");

/// Categories used by products but missing from the translation file (a real quirk).
pub(crate) const UNTRANSLATED: [&str; 2] =
    ["pc_gamer", "portateis_cozinha_e_preparadores_de_alimentos"];

/// Products per category in the real products file; unknown names weigh 5.
#[rustfmt::skip]
const CATEGORY_WEIGHTS: &[(&str, u32)] = &[
    ("cama_mesa_banho", 3029), ("esporte_lazer", 2867), ("moveis_decoracao", 2657),
    ("beleza_saude", 2444), ("utilidades_domesticas", 2335), ("automotivo", 1900),
    ("informatica_acessorios", 1639), ("brinquedos", 1411), ("relogios_presentes", 1329),
    ("telefonia", 1134), ("bebes", 919), ("perfumaria", 868), ("papelaria", 849),
    ("fashion_bolsas_e_acessorios", 849), ("cool_stuff", 789), ("ferramentas_jardim", 753),
    ("pet_shop", 719), ("eletronicos", 517), ("construcao_ferramentas_construcao", 400),
    ("eletrodomesticos", 370), ("malas_acessorios", 349), ("consoles_games", 317),
    ("moveis_escritorio", 309), ("instrumentos_musicais", 289), ("eletroportateis", 231),
    ("casa_construcao", 225), ("livros_interesse_geral", 216), ("fashion_calcados", 173),
    ("moveis_sala", 156), ("climatizacao", 124), ("livros_tecnicos", 123),
    ("telefonia_fixa", 116), ("casa_conforto", 111), ("market_place", 104),
    ("alimentos_bebidas", 104), ("fashion_roupa_masculina", 95),
    ("moveis_cozinha_area_de_servico_jantar_e_jardim", 94), ("sinalizacao_e_seguranca", 93),
    ("construcao_ferramentas_seguranca", 91), ("eletrodomesticos_2", 90),
    ("construcao_ferramentas_jardim", 88), ("alimentos", 82), ("bebidas", 81),
    ("construcao_ferramentas_iluminacao", 78), ("agro_industria_e_comercio", 74),
    ("industria_comercio_e_negocios", 68), ("artigos_de_natal", 65), ("audio", 58),
    ("artes", 55), ("fashion_underwear_e_moda_praia", 53), ("dvds_blu_ray", 48),
    ("moveis_quarto", 45), ("construcao_ferramentas_ferramentas", 39),
    ("livros_importados", 31), ("portateis_casa_forno_e_cafe", 31), ("pcs", 30),
    ("cine_foto", 28), ("fashion_roupa_feminina", 27), ("musica", 27),
    ("artigos_de_festas", 26), ("fashion_esporte", 19), ("artes_e_artesanato", 19),
    ("flores", 14), ("fraldas_higiene", 12), ("la_cuisine", 10),
    ("moveis_colchao_e_estofado", 10), ("tablets_impressao_imagem", 9),
    ("fashion_roupa_infanto_juvenil", 5), ("casa_conforto_2", 5), ("seguros_e_servicos", 2),
    ("cds_dvds_musicais", 1),
];

/// Photo counts 1..=20 and their weights.
#[rustfmt::skip]
const PHOTO_WEIGHTS: [f64; 20] = [
    50.0, 19.0, 11.0, 7.5, 5.0, 3.5, 1.3, 1.0, 0.6, 0.6,
    0.3, 0.2, 0.1, 0.05, 0.05, 0.02, 0.02, 0.02, 0.02, 0.02,
];

/// The Portuguese category names of the translation file, in file order.
pub(crate) fn translated_categories() -> Vec<String> {
    let text = String::from_utf8_lossy(TRANSLATION);
    let text = text.trim_start_matches('\u{feff}');
    text.lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A generated seller.
#[derive(Debug)]
pub(crate) struct Seller {
    /// 32-hex id.
    pub id: String,
    /// Zip-code prefix.
    pub zip: u32,
    /// Index into [`CITIES`].
    pub city: usize,
}

/// A generated product.
#[derive(Debug)]
pub(crate) struct Product {
    /// 32-hex id.
    pub id: String,
    /// Index of the seller that lists it.
    pub seller: usize,
    /// Its usual price, in cents.
    pub price: u64,
    /// Weight in grams (drives freight).
    pub weight: u32,
}

/// Generates `n` sellers and writes `olist_sellers_dataset.csv`.
pub(crate) fn sellers(
    n: usize,
    seed: u64,
    places: &Places,
    out: &Path,
) -> std::io::Result<Vec<Seller>> {
    let mut rng = stream(seed, 1);
    let mut w = create(out, "olist_sellers_dataset.csv")?;
    write_quoted_header(
        &mut w,
        &[
            "seller_id",
            "seller_zip_code_prefix",
            "seller_city",
            "seller_state",
        ],
    )?;
    let mut sellers = Vec::with_capacity(n);
    let mut row = Row::default();
    for _ in 0..n {
        let city = places.seller_city(&mut rng);
        let s = Seller {
            id: hex_id(&mut rng),
            zip: zip_in(&mut rng, city),
            city,
        };
        let c = &CITIES[city];
        row.clear();
        row.field(&s.id);
        let _ = write!(row.buf(), "{:05}", s.zip);
        row.end();
        if rng.random_bool(0.001) {
            let _ = write!(row.buf(), "{}, {}, brasil", c.name, state_name(c.state));
            row.end();
        } else {
            row.field(c.name);
        }
        row.field(c.state);
        row.write_partial(&mut w, &[0, 1, 2, 3])?;
        sellers.push(s);
    }
    w.flush()?;
    Ok(sellers)
}

/// Generates `n` products over `n_sellers` sellers and writes `olist_products_dataset.csv`.
pub(crate) fn products(
    n: usize,
    n_sellers: usize,
    seed: u64,
    out: &Path,
) -> std::io::Result<Vec<Product>> {
    let mut rng = stream(seed, 2);
    let mut names: Vec<String> = translated_categories();
    let mut weights: Vec<f64> = names
        .iter()
        .map(|n| {
            CATEGORY_WEIGHTS
                .iter()
                .find(|(k, _)| k == n)
                .map_or(5.0, |(_, w)| f64::from(*w))
        })
        .collect();
    // Empty category (~1.85%) and the two untranslated ones, with the real shares.
    names.push(String::new());
    weights.push(610.0);
    for (name, weight) in UNTRANSLATED.iter().zip([3.0, 10.0]) {
        names.push((*name).to_owned());
        weights.push(weight);
    }
    let mut cats: Vec<usize> = (0..n).map(|_| weighted(&mut rng, &weights)).collect();
    // Guarantee every quirk at least once, however small the scale.
    let quirks = [names.len() - 3, names.len() - 2, names.len() - 1];
    for (k, q) in quirks.iter().enumerate() {
        if !cats.contains(q) && n > quirks.len() {
            let i = rng.random_range(0..n / 3) * 3 + k;
            cats[i.min(n - 1)] = *q;
        }
    }

    let mut w = create(out, "olist_products_dataset.csv")?;
    write_quoted_header(
        &mut w,
        &[
            "product_id",
            "product_category_name",
            "product_name_lenght",
            "product_description_lenght",
            "product_photos_qty",
            "product_weight_g",
            "product_length_cm",
            "product_height_cm",
            "product_width_cm",
        ],
    )?;
    let mut products = Vec::with_capacity(n);
    let mut row = Row::default();
    for (i, &cat) in cats.iter().enumerate() {
        let id = hex_id(&mut rng);
        // Every seller lists at least one product; the rest go to popular sellers.
        let seller = if i < n_sellers {
            i
        } else {
            skewed(&mut rng, n_sellers, 2.5)
        };
        let weight = if rng.random_bool(0.003) {
            0
        } else {
            let g = lognormal(&mut rng, 700.0, 1.25).clamp(50.0, 40_400.0) as u32;
            if g > 200 && rng.random_bool(0.6) {
                (g + 25) / 50 * 50
            } else {
                g
            }
        };
        let price = product_price(&mut rng);
        row.clear();
        row.field(&id);
        row.field(&names[cat]);
        if names[cat].is_empty() {
            (0..3).for_each(|_| row.end());
        } else {
            let name_len = (48.5 + 10.0 * normal(&mut rng)).clamp(5.0, 76.0) as u32;
            let desc_len = lognormal(&mut rng, 600.0, 0.75).clamp(4.0, 3992.0) as u32;
            let photos = weighted(&mut rng, &PHOTO_WEIGHTS) + 1;
            for v in [name_len, desc_len, photos as u32] {
                let _ = write!(row.buf(), "{v}");
                row.end();
            }
        }
        if rng.random_bool(0.00006) {
            (0..4).for_each(|_| row.end());
        } else {
            let length = lognormal(&mut rng, 25.0, 0.45).clamp(7.0, 105.0) as u32;
            let height = lognormal(&mut rng, 13.0, 0.7).clamp(2.0, 105.0) as u32;
            let width = lognormal(&mut rng, 20.0, 0.45).clamp(6.0, 118.0) as u32;
            for v in [weight, length, height, width] {
                let _ = write!(row.buf(), "{v}");
                row.end();
            }
        }
        row.write_partial(&mut w, &[0, 1])?;
        products.push(Product {
            id,
            seller,
            price,
            weight,
        });
    }
    w.flush()?;
    Ok(products)
}

/// A shop price in cents: mostly "nice" prices (`54.90`, `199.00`, `49.99`), median ~R$ 75.
fn product_price(rng: &mut rand_chacha::ChaCha8Rng) -> u64 {
    let reais = lognormal(rng, 75.0, 0.95).clamp(0.85, 6735.0);
    let whole = reais.floor().max(1.0) as u64;
    match rng.random_range(0..100) {
        0..45 => whole * 100 - 10,
        45..75 => whole * 100,
        75..85 => whole * 100 - 1,
        _ => ((reais * 100.0).round() as u64).max(85),
    }
}

/// Writes the translation file (always the complete real one) and returns its row count.
pub(crate) fn translation(out: &Path) -> std::io::Result<u64> {
    let mut w = create(out, "product_category_name_translation.csv")?;
    w.write_all(TRANSLATION)?;
    w.flush()?;
    Ok(translated_categories().len() as u64)
}
