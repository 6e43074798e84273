-- GOLD_SPEC 5: one row per (seller_state, customer_state). A delivery is a distinct
-- (order, seller) pair among items of delivered orders with a delivery date; each delivery
-- counts its order's delivery time.
WITH deliveries AS (
    SELECT DISTINCT order_id, seller_id, customer_id, delivery_seconds, delivered_on_time
    FROM {{ ref('int_delivered_items') }}
    WHERE has_delivery_date
),
states AS (
    SELECT
        se.seller_state,
        c.customer_state,
        count(*) AS total_deliveries,
        sum(d.delivery_seconds) AS seconds,
        sum(CASE WHEN d.delivered_on_time THEN 1 ELSE 0 END) AS on_time
    FROM deliveries d
    LEFT JOIN {{ ref('stg_sellers') }} se ON se.seller_id = d.seller_id
    LEFT JOIN {{ ref('stg_customers') }} c ON c.customer_id = d.customer_id
    GROUP BY se.seller_state, c.customer_state
),
rates AS (
    SELECT *, {{ round_div('on_time * 10000', 'total_deliveries') }} AS on_time_units
    FROM states
)
SELECT
    seller_state,
    customer_state,
    total_deliveries,
    {{ hundredths(round_div('seconds * 100', 'total_deliveries * 86400')) }} AS avg_delivery_days,
    {{ ten_thousandths('on_time_units') }} AS on_time_rate,
    {{ ten_thousandths('10000 - on_time_units') }} AS late_rate
FROM rates
