-- GOLD_SPEC 3: one row per customer_unique_id with a delivered order that has items.
-- The recency reference date is the var `reference_date` (YYYY-MM-DD); by default the latest
-- purchase date over all orders, so results do not depend on the day the model runs.
WITH orders AS (
    SELECT c.customer_unique_id, i.order_id, i.order_date, sum(i.revenue_cents) AS revenue_cents
    FROM {{ ref('int_delivered_items') }} i
    LEFT JOIN {{ ref('stg_customers') }} c ON c.customer_id = i.customer_id
    GROUP BY c.customer_unique_id, i.order_id, i.order_date
),
reference AS (
{%- if var('reference_date', none) is none %}
    SELECT max(order_date) AS reference_date FROM {{ ref('stg_orders') }}
{%- else %}
    SELECT DATE '{{ var('reference_date') }}' AS reference_date
{%- endif %}
),
customers AS (
    SELECT customer_unique_id, max(order_date) AS last_order_date, count(*) AS frequency,
        sum(revenue_cents) AS monetary_cents
    FROM orders
    GROUP BY customer_unique_id
),
scored AS (
    SELECT
        c.customer_unique_id,
        CAST(r.reference_date - c.last_order_date AS BIGINT) AS recency_days,
        c.frequency,
        c.monetary_cents
    FROM customers c
    CROSS JOIN reference r
)
SELECT
    customer_unique_id,
    recency_days,
    frequency,
    {{ money('monetary_cents') }} AS monetary,
    {{ rfm_segment('recency_days', 'frequency', money('monetary_cents')) }} AS rfm_segment
FROM scored
