-- Top 10 brands per day by purchase revenue (ties: brand name): purchases, units, revenue,
-- distinct buyers and distinct products sold.
WITH sales AS (
    SELECT
        date AS day,
        brand,
        count(*) AS purchases,
        sum(quantity) AS units,
        round(sum(price * quantity), 2) AS revenue,
        count(DISTINCT user_id) AS buyers,
        count(DISTINCT product_id) AS products
    FROM fact_events
    WHERE event_type = 'purchase'
    GROUP BY day, brand
)
SELECT day, rank, brand, purchases, units, revenue, buyers, products
FROM (
    SELECT *, row_number() OVER (PARTITION BY day ORDER BY revenue DESC, brand) AS rank
    FROM sales
)
WHERE rank <= 10
ORDER BY day, rank;
