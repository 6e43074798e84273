-- One row per order, with its purchase date and, once delivered, the delivery time.
SELECT
    order_id,
    customer_id,
    order_status,
    order_purchase_timestamp,
    CAST(order_purchase_timestamp AS DATE) AS order_date,
    order_delivered_customer_date,
    order_estimated_delivery_date,
    {{ epoch_seconds('order_delivered_customer_date') }} - {{ epoch_seconds('order_purchase_timestamp') }} AS delivery_seconds,
    coalesce(CAST(order_delivered_customer_date AS DATE) <= CAST(order_estimated_delivery_date AS DATE), false) AS delivered_on_time
FROM {{ source('silver', 'orders') }}
