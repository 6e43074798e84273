//! Order reviews: scores skewed to 5, mostly empty comments, Portuguese text with accents,
//! commas, quotes and embedded line breaks.

use std::path::Path;

use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

use super::orders::{Order, Status};
use super::util::{DAY, Row, csv_writer, hex_id, lognormal, push_ts, stream, weighted};

const GOOD: &[&str] = &[
    "Produto muito bom",
    "Chegou antes do prazo",
    "Recomendo",
    "Ótimo produto, recomendo",
    "Entrega rápida e produto de ótima qualidade",
    "Tudo certo, chegou no prazo",
    "Excelente atendimento",
    "Muito satisfeita com a compra",
    "Produto conforme o anúncio",
    "Gostei muito",
    "Bem embalado e entregue antes do prazo previsto",
    "Parabéns à loja",
    "Super recomendo, vendedor confiável",
    "Comprarei novamente",
    "O produto é lindo, igual à foto",
    "Chegou rápido, mesmo sendo feriado",
    "Melhor preço da internet",
    "Já é o segundo pedido que faço e recebi sem problema nenhum",
];

const MIXED: &[&str] = &[
    "O produto é bom, mas demorou a chegar",
    "Ainda não usei",
    "Razoável",
    "A cor veio um pouco diferente da foto",
    "Embalagem chegou amassada, mas o produto está ok",
    "Não instalei ainda",
    "Atendeu às expectativas, nada além disso",
    "Veio faltando o manual",
    "O tamanho é menor do que eu esperava",
];

const BAD: &[&str] = &[
    "Não recebi o produto",
    "Produto veio com defeito",
    "Ainda aguardo a entrega",
    "Comprei dois e só recebi um",
    "Péssimo, não recomendo",
    "Veio errado, solicitei a troca",
    "Já passou do prazo e nada",
    "Não respondem às mensagens",
    "A nota fiscal não veio",
    "Produto de má qualidade, quebrou na primeira semana",
    "Quero meu dinheiro de volta",
    "Entrega atrasada, sem informação dos correios",
    "Anunciado como \"original\", mas veio sem lacre",
];

const TITLES_GOOD: &[&str] = &[
    "Recomendo",
    "Ótimo",
    "Muito bom",
    "Excelente produto",
    "Super recomendo",
    "Perfeito",
    "Entrega rápida",
    "Parabéns ",
    "Bom",
];
const TITLES_MIXED: &[&str] = &[
    "Razoável",
    "Bom ",
    "Atrasou mas chegou",
    "Regular",
    "Tamanho",
];
const TITLES_BAD: &[&str] = &[
    "Não recebi",
    "Produto errado",
    "Péssimo",
    "Decepcionado",
    "não recomendo",
    "Produto com defeito",
];

/// Scores 1..=5 for a smooth order, and for a late or undelivered one.
const SCORES_OK: [f64; 5] = [6.0, 2.5, 8.0, 21.0, 62.5];
const SCORES_BAD: [f64; 5] = [45.0, 10.0, 15.0, 10.0, 20.0];

/// One review row (kept to repeat its id and content on another order, a real quirk).
#[derive(Debug, Clone)]
struct Review {
    id: String,
    score: usize,
    title: String,
    message: String,
    created: i64,
    answered: i64,
}

/// Applies the casing habits of real reviewers.
fn casing(rng: &mut ChaCha8Rng, s: &str) -> String {
    match rng.random_range(0..100) {
        0..8 => s.to_uppercase(),
        8..18 => s.to_lowercase(),
        _ => s.to_owned(),
    }
}

/// A comment message of one to three sentences.
fn message(rng: &mut ChaCha8Rng, pool: &[&str]) -> String {
    let n = weighted(rng, &[60.0, 30.0, 10.0]) + 1;
    let sentences: Vec<&str> = pool.choose_multiple(rng, n).copied().collect();
    let mut m = String::new();
    for (k, sentence) in sentences.iter().enumerate() {
        if k > 0 {
            let join = [". ", " ", ", ", ".\n", " \n", "\n\n"];
            m.push_str(join[weighted(rng, &[40.0, 25.0, 20.0, 8.0, 4.0, 3.0])]);
        }
        m.push_str(sentence);
    }
    match rng.random_range(0..100) {
        0..15 => m.push(' '),
        15..35 => m.push_str(if rng.random_bool(0.5) { "." } else { "!" }),
        35..37 => m.push('\n'),
        _ => {}
    }
    casing(rng, &m)
}

/// Draws a fresh review for an order.
fn review(rng: &mut ChaCha8Rng, o: &Order) -> Review {
    let late = o.delivered.is_none_or(|d| d > o.estimated + DAY);
    let weights = if late && o.status != Status::Shipped {
        &SCORES_BAD
    } else {
        &SCORES_OK
    };
    let score = weighted(rng, weights) + 1;
    let (pool, titles) = match score {
        4 | 5 => (GOOD, TITLES_GOOD),
        3 => (MIXED, TITLES_MIXED),
        _ => (BAD, TITLES_BAD),
    };
    let title = if rng.random_bool(0.117) {
        let t = titles.choose(rng).copied().unwrap_or("Ok");
        casing(rng, t)
    } else {
        String::new()
    };
    let p_empty = [0.2, 0.3, 0.5, 0.68, 0.66][score - 1];
    let message = if rng.random_bool(p_empty) {
        String::new()
    } else {
        message(rng, pool)
    };
    let base = o.delivered.unwrap_or(o.estimated);
    let created = (base / DAY + weighted(rng, &[40.0, 50.0, 6.0, 4.0]) as i64) * DAY;
    let answered = created + ((lognormal(rng, 1.6, 1.0) * DAY as f64) as i64).max(9000);
    Review {
        id: hex_id(rng),
        score,
        title,
        message,
        created,
        answered,
    }
}

/// Generates ~1 review per order and writes `olist_order_reviews_dataset.csv`; returns the
/// number of rows.
pub(crate) fn reviews(orders: &[Order], seed: u64, out: &Path) -> std::io::Result<u64> {
    let mut rng = stream(seed, 7);
    let mut w = csv_writer(out, "olist_order_reviews_dataset.csv")?;
    w.write_record([
        "review_id",
        "order_id",
        "review_score",
        "review_comment_title",
        "review_comment_message",
        "review_creation_date",
        "review_answer_timestamp",
    ])?;
    let mut row = Row::default();
    let mut rows = 0;
    let mut last: Option<Review> = None;
    for o in orders {
        let n = weighted(&mut rng, &[0.77, 98.68, 0.55]);
        for _ in 0..n {
            let r = match &last {
                Some(prev) if rng.random_bool(0.008) => prev.clone(),
                _ => review(&mut rng, o),
            };
            row.clear();
            row.field(&r.id);
            row.field(&o.id);
            row.field(["1", "2", "3", "4", "5"][r.score - 1]);
            row.field(&r.title);
            row.field(&r.message);
            push_ts(row.buf(), r.created);
            row.end();
            push_ts(row.buf(), r.answered);
            row.end();
            row.write_csv(&mut w)?;
            rows += 1;
            last = Some(r);
        }
    }
    w.flush()?;
    Ok(rows)
}
