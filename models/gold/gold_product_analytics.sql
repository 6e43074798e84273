-- GOLD_SPEC 4: one row per product category over items of delivered orders.
WITH items AS (
    SELECT coalesce(p.product_category, 'unknown') AS product_category, i.order_id, i.price_cents
    FROM {{ ref('int_delivered_items') }} i
    LEFT JOIN {{ ref('stg_products') }} p ON p.product_id = i.product_id
),
sales AS (
    SELECT product_category, count(*) AS total_sold, sum(price_cents) AS price_cents
    FROM items
    GROUP BY product_category
),
scores AS (
    SELECT c.product_category, sum(r.review_score) AS score_sum, count(r.review_score) AS scores
    FROM (SELECT DISTINCT product_category, order_id FROM items) c
    JOIN {{ ref('stg_reviews') }} r ON r.order_id = c.order_id
    GROUP BY c.product_category
)
SELECT
    s.product_category,
    s.total_sold,
    {{ money('s.price_cents') }} AS total_revenue,
    {{ money(round_div('s.price_cents', 's.total_sold')) }} AS avg_price,
    {{ hundredths(round_div('sc.score_sum * 100', 'sc.scores')) }} AS avg_review_score
FROM sales s
LEFT JOIN scores sc ON sc.product_category = s.product_category
