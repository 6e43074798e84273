-- GOLD_SPEC 2: one row per seller with at least one item in a delivered order.
WITH seller_orders AS (
    SELECT DISTINCT seller_id, order_id, delivery_seconds
    FROM {{ ref('int_delivered_items') }}
),
sales AS (
    SELECT seller_id, count(DISTINCT order_id) AS total_orders, sum(revenue_cents) AS revenue_cents
    FROM {{ ref('int_delivered_items') }}
    GROUP BY seller_id
),
delivery AS (
    SELECT seller_id, sum(delivery_seconds) AS seconds, count(delivery_seconds) AS orders
    FROM seller_orders
    GROUP BY seller_id
),
scores AS (
    SELECT so.seller_id, sum(r.review_score) AS score_sum, count(r.review_score) AS scores
    FROM seller_orders so
    JOIN {{ ref('stg_reviews') }} r ON r.order_id = so.order_id
    GROUP BY so.seller_id
)
SELECT
    s.seller_id,
    se.seller_city,
    s.total_orders,
    {{ money('s.revenue_cents') }} AS total_revenue,
    {{ hundredths(round_div('sc.score_sum * 100', 'sc.scores')) }} AS avg_review_score,
    {{ hundredths(round_div('d.seconds * 100', 'd.orders * 86400')) }} AS avg_delivery_days
FROM sales s
LEFT JOIN {{ ref('stg_sellers') }} se ON se.seller_id = s.seller_id
LEFT JOIN delivery d ON d.seller_id = s.seller_id
LEFT JOIN scores sc ON sc.seller_id = s.seller_id
