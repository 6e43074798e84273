-- One row per review: a (review_id, order_id) pair.
SELECT
    review_id,
    order_id,
    review_score
FROM {{ source('silver', 'reviews') }}
