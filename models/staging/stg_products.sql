-- One row per product, with its category in English where the translation has it, else in
-- Portuguese (null when the product has no category).
SELECT
    p.product_id,
    coalesce(t.product_category_name_english, p.product_category_name) AS product_category
FROM {{ source('silver', 'products') }} p
LEFT JOIN {{ source('silver', 'category_translation') }} t
    ON t.product_category_name = p.product_category_name
