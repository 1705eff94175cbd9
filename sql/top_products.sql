-- Top 10 products per day by purchase revenue (ties: lower product id), with name, brand,
-- category and list price from that day's product snapshot (the star join).
WITH sales AS (
    SELECT
        date AS day,
        product_id,
        count(*) AS purchases,
        sum(quantity) AS units,
        round(sum(price * quantity), 2) AS revenue,
        count(DISTINCT user_id) AS buyers
    FROM fact_events
    WHERE event_type = 'purchase'
    GROUP BY day, product_id
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY day ORDER BY revenue DESC, product_id) AS rank
    FROM sales
)
SELECT
    r.day, r.rank, r.product_id, p.name, p.brand, p.category_code, p.price AS list_price,
    r.purchases, r.units, r.revenue, r.buyers
FROM ranked r
LEFT JOIN dim_product p ON p.product_id = r.product_id AND p.date = r.day
WHERE r.rank <= 10
ORDER BY r.day, r.rank;
