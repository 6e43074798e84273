-- One row per seller.
SELECT
    seller_id,
    seller_city,
    seller_state
FROM {{ source('silver', 'sellers') }}
