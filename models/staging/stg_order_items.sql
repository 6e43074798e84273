-- One row per order item, with its money in integer cents (item revenue = price + freight).
SELECT
    order_id,
    order_item_id,
    product_id,
    seller_id,
    price,
    freight_value,
    {{ cents('price') }} AS price_cents,
    {{ cents('price + freight_value') }} AS revenue_cents
FROM {{ source('silver', 'order_items') }}
