-- One row per customer_id, with the person behind it (customer_unique_id) and their state.
SELECT
    customer_id,
    customer_unique_id,
    customer_city,
    customer_state
FROM {{ source('silver', 'customers') }}
