-- Items of delivered orders, with what the gold models need of their order.
SELECT
    i.order_id,
    i.order_item_id,
    i.product_id,
    i.seller_id,
    i.price_cents,
    i.revenue_cents,
    o.customer_id,
    o.order_date,
    o.order_delivered_customer_date IS NOT NULL AS has_delivery_date,
    o.delivery_seconds,
    o.delivered_on_time
FROM {{ ref('stg_order_items') }} i
JOIN {{ ref('stg_orders') }} o ON o.order_id = i.order_id
WHERE o.order_status = 'delivered'
