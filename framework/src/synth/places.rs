//! Brazilian places: cities with their state, zip-code prefix range and coordinates.
//!
//! The customer weights follow the state shares of the Olist customers; sellers lean harder on
//! São Paulo like the real sellers file.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::util::{splitmix, weighted};

/// A city the generator places customers, sellers and geolocation points in.
#[derive(Debug)]
pub(crate) struct City {
    /// Lowercase, unaccented name (customers, sellers).
    pub name: &'static str,
    /// Accented spelling, used by some geolocation rows (empty when there is none).
    pub accented: &'static str,
    /// Two-letter state code.
    pub state: &'static str,
    /// First zip-code prefix (5 digits as a number).
    pub zip_lo: u32,
    /// Last zip-code prefix.
    pub zip_hi: u32,
    /// Latitude of the centre.
    pub lat: f64,
    /// Longitude of the centre.
    pub lng: f64,
    /// Relative weight for customers.
    pub w_customer: f64,
    /// Relative weight for sellers.
    pub w_seller: f64,
}

const fn c(
    name: &'static str,
    accented: &'static str,
    state: &'static str,
    zip: (u32, u32),
    pos: (f64, f64),
    w: (f64, f64),
) -> City {
    City {
        name,
        accented,
        state,
        zip_lo: zip.0,
        zip_hi: zip.1,
        lat: pos.0,
        lng: pos.1,
        w_customer: w.0,
        w_seller: w.1,
    }
}

/// The cities (weights are per mille of customers / sellers, roughly).
#[rustfmt::skip]
pub(crate) static CITIES: &[City] = &[
    c("sao paulo", "são paulo", "SP", (1000, 5999), (-23.55, -46.63), (156.0, 225.0)),
    c("guarulhos", "", "SP", (7000, 7399), (-23.46, -46.53), (12.0, 12.0)),
    c("osasco", "", "SP", (6000, 6299), (-23.53, -46.79), (9.0, 8.0)),
    c("barueri", "", "SP", (6400, 6499), (-23.51, -46.88), (5.0, 8.0)),
    c("santo andre", "santo andré", "SP", (9000, 9299), (-23.66, -46.53), (9.0, 8.0)),
    c("sao bernardo do campo", "são bernardo do campo", "SP", (9600, 9899), (-23.69, -46.56), (9.0, 10.0)),
    c("mogi das cruzes", "", "SP", (8700, 8899), (-23.52, -46.19), (4.0, 4.0)),
    c("campinas", "", "SP", (13000, 13139), (-22.90, -47.06), (15.0, 33.0)),
    c("jundiai", "jundiaí", "SP", (13200, 13219), (-23.19, -46.88), (8.0, 12.0)),
    c("piracicaba", "", "SP", (13400, 13427), (-22.73, -47.65), (4.0, 17.0)),
    c("limeira", "", "SP", (13480, 13489), (-22.56, -47.40), (3.0, 12.0)),
    c("sorocaba", "", "SP", (18000, 18109), (-23.50, -47.46), (6.0, 11.0)),
    c("ribeirao preto", "ribeirão preto", "SP", (14000, 14114), (-21.18, -47.81), (7.0, 17.0)),
    c("franca", "", "SP", (14400, 14414), (-20.54, -47.40), (3.0, 6.0)),
    c("santos", "", "SP", (11000, 11099), (-23.96, -46.33), (7.0, 5.0)),
    c("sao jose dos campos", "são josé dos campos", "SP", (12200, 12248), (-23.18, -45.88), (7.0, 9.0)),
    c("taubate", "taubaté", "SP", (12000, 12119), (-23.03, -45.56), (3.0, 5.0)),
    c("sao jose do rio preto", "são josé do rio preto", "SP", (15000, 15099), (-20.82, -49.38), (5.0, 14.0)),
    c("bauru", "", "SP", (17000, 17109), (-22.32, -49.07), (3.0, 6.0)),
    c("rio de janeiro", "", "RJ", (20000, 23799), (-22.91, -43.17), (70.0, 31.0)),
    c("niteroi", "niterói", "RJ", (24000, 24399), (-22.88, -43.10), (9.0, 3.0)),
    c("sao goncalo", "são gonçalo", "RJ", (24400, 24799), (-22.83, -43.05), (6.0, 1.0)),
    c("duque de caxias", "", "RJ", (25000, 25299), (-22.79, -43.31), (4.0, 1.0)),
    c("nova iguacu", "nova iguaçu", "RJ", (26000, 26099), (-22.76, -43.45), (5.0, 1.0)),
    c("petropolis", "petrópolis", "RJ", (25600, 25779), (-22.51, -43.18), (3.0, 4.0)),
    c("belo horizonte", "", "MG", (30000, 31999), (-19.92, -43.94), (28.0, 22.0)),
    c("contagem", "", "MG", (32000, 32399), (-19.93, -44.05), (6.0, 4.0)),
    c("uberlandia", "uberlândia", "MG", (38400, 38415), (-18.92, -48.28), (7.0, 5.0)),
    c("juiz de fora", "", "MG", (36000, 36099), (-21.76, -43.35), (7.0, 5.0)),
    c("montes claros", "", "MG", (39400, 39409), (-16.73, -43.86), (4.0, 2.0)),
    c("pocos de caldas", "poços de caldas", "MG", (37700, 37719), (-21.79, -46.56), (3.0, 4.0)),
    c("porto alegre", "", "RS", (90000, 91999), (-30.03, -51.23), (14.0, 16.0)),
    c("caxias do sul", "", "RS", (95000, 95129), (-29.17, -51.18), (5.0, 10.0)),
    c("novo hamburgo", "", "RS", (93300, 93599), (-29.68, -51.13), (3.0, 6.0)),
    c("pelotas", "", "RS", (96000, 96099), (-31.77, -52.34), (4.0, 2.0)),
    c("curitiba", "", "PR", (80000, 82999), (-25.43, -49.27), (16.0, 42.0)),
    c("sao jose dos pinhais", "são josé dos pinhais", "PR", (83000, 83099), (-25.53, -49.21), (3.0, 6.0)),
    c("londrina", "", "PR", (86000, 86099), (-23.31, -51.16), (6.0, 20.0)),
    c("maringa", "maringá", "PR", (87000, 87119), (-23.42, -51.94), (5.0, 25.0)),
    c("florianopolis", "florianópolis", "SC", (88000, 88099), (-27.59, -48.55), (6.0, 8.0)),
    c("joinville", "", "SC", (89200, 89239), (-26.30, -48.85), (6.0, 13.0)),
    c("blumenau", "", "SC", (89000, 89099), (-26.92, -49.07), (5.0, 13.0)),
    c("jaragua do sul", "jaraguá do sul", "SC", (89250, 89269), (-26.48, -49.07), (3.0, 10.0)),
    c("salvador", "", "BA", (40000, 42499), (-12.97, -38.50), (13.0, 3.0)),
    c("feira de santana", "", "BA", (44000, 44099), (-12.27, -38.97), (4.0, 1.0)),
    c("lauro de freitas", "", "BA", (42700, 42749), (-12.89, -38.33), (3.0, 2.0)),
    c("brasilia", "brasília", "DF", (70000, 73699), (-15.79, -47.88), (21.0, 10.0)),
    c("goiania", "goiânia", "GO", (74000, 74899), (-16.68, -49.25), (7.0, 9.0)),
    c("anapolis", "anápolis", "GO", (75000, 75159), (-16.33, -48.95), (3.0, 3.0)),
    c("vitoria", "vitória", "ES", (29000, 29099), (-20.32, -40.34), (7.0, 3.0)),
    c("vila velha", "", "ES", (29100, 29129), (-20.33, -40.29), (6.0, 3.0)),
    c("serra", "", "ES", (29160, 29184), (-20.13, -40.31), (5.0, 2.0)),
    c("recife", "", "PE", (50000, 52999), (-8.05, -34.88), (10.0, 2.0)),
    c("jaboatao dos guararapes", "jaboatão dos guararapes", "PE", (54000, 54499), (-8.11, -35.01), (3.0, 1.0)),
    c("fortaleza", "", "CE", (60000, 61599), (-3.73, -38.52), (10.0, 4.0)),
    c("sao luis", "são luís", "MA", (65000, 65099), (-2.53, -44.30), (7.0, 1.0)),
    c("cuiaba", "cuiabá", "MT", (78000, 78099), (-15.60, -56.10), (8.0, 1.0)),
    c("belem", "belém", "PA", (66000, 66999), (-1.46, -48.50), (8.0, 1.0)),
    c("campo grande", "", "MS", (79000, 79129), (-20.47, -54.62), (7.0, 2.0)),
    c("teresina", "", "PI", (64000, 64099), (-5.09, -42.80), (5.0, 1.0)),
    c("natal", "", "RN", (59000, 59161), (-5.79, -35.21), (5.0, 2.0)),
    c("joao pessoa", "joão pessoa", "PB", (58000, 58099), (-7.12, -34.86), (5.0, 2.0)),
    c("maceio", "maceió", "AL", (57000, 57099), (-9.67, -35.74), (4.0, 0.5)),
    c("porto velho", "", "RO", (76800, 76849), (-8.76, -63.90), (3.0, 0.5)),
    c("palmas", "", "TO", (77000, 77270), (-10.18, -48.33), (2.0, 0.3)),
    c("aracaju", "", "SE", (49000, 49099), (-10.91, -37.07), (2.0, 0.5)),
    c("rio branco", "", "AC", (69900, 69923), (-9.97, -67.81), (1.0, 0.3)),
    c("boa vista", "", "RR", (69300, 69339), (-2.82, -60.67), (0.5, 0.1)),
    c("macapa", "macapá", "AP", (68900, 68914), (0.03, -51.07), (0.7, 0.1)),
    c("manaus", "", "AM", (69000, 69099), (-3.10, -60.02), (1.5, 0.3)),
];

/// Full state name, for the sellers' rare `city, state, brasil` quirk.
pub(crate) fn state_name(code: &str) -> &'static str {
    match code {
        "SP" => "sao paulo",
        "RJ" => "rio de janeiro",
        "MG" => "minas gerais",
        "RS" => "rio grande do sul",
        "PR" => "parana",
        "SC" => "santa catarina",
        _ => "brasil",
    }
}

/// Weighted city pickers for customers and sellers.
#[derive(Debug)]
pub(crate) struct Places {
    customer_w: Vec<f64>,
    seller_w: Vec<f64>,
}

impl Places {
    /// Builds the weight tables.
    pub(crate) fn new() -> Self {
        Self {
            customer_w: CITIES.iter().map(|c| c.w_customer).collect(),
            seller_w: CITIES.iter().map(|c| c.w_seller).collect(),
        }
    }

    /// A city index for a customer.
    pub(crate) fn customer_city(&self, rng: &mut ChaCha8Rng) -> usize {
        weighted(rng, &self.customer_w)
    }

    /// A city index for a seller.
    pub(crate) fn seller_city(&self, rng: &mut ChaCha8Rng) -> usize {
        weighted(rng, &self.seller_w)
    }
}

/// A zip-code prefix inside the city's range.
pub(crate) fn zip_in(rng: &mut ChaCha8Rng, city: usize) -> u32 {
    let c = &CITIES[city];
    rng.random_range(c.zip_lo..=c.zip_hi)
}

/// The (stable) centre of a zip-code prefix: near its city, deterministic per zip and seed.
pub(crate) fn zip_centre(city: usize, zip: u32, seed: u64) -> (f64, f64) {
    let c = &CITIES[city];
    let h = splitmix(u64::from(zip) ^ seed.rotate_left(17));
    let a = (h & 0xFFFF_FFFF) as f64 / 4_294_967_296.0 - 0.5;
    let b = (h >> 32) as f64 / 4_294_967_296.0 - 0.5;
    let spread = 0.05 + 0.0002 * f64::from(c.zip_hi - c.zip_lo).sqrt();
    (c.lat + a * spread, c.lng + b * spread)
}
