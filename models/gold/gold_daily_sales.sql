-- GOLD_SPEC 1: one row per purchase date over delivered orders that have items.
-- Incremental: when its inputs only gained rows, a run recomputes the last `lookback_days` dates
-- already in the table and every later date, and merges them on order_date. When an added row
-- reaches an older date (a late order, a new item of an old order), or an input updated or
-- deleted rows, the engine builds it in full.
{{ config(materialized='incremental', unique_key='order_date') }}
SELECT
    order_date,
    count(DISTINCT order_id) AS total_orders,
    {{ money('sum(revenue_cents)') }} AS total_revenue,
    {{ money(round_div('sum(revenue_cents)', 'count(DISTINCT order_id)')) }} AS avg_order_value,
    count(*) AS total_items
FROM {{ ref('int_delivered_items') }}
{% if is_incremental() %}
WHERE order_date >= (SELECT max(order_date) FROM {{ this }}) - {{ var('lookback_days', 2) }}
{% endif %}
GROUP BY order_date
