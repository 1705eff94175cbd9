-- The dimension snapshots per date: rows and distinct keys (equal: each key once), and the
-- brands and categories (products) or countries and segments (users) they hold.
SELECT date AS day, 'product' AS dimension, count(*) AS rows, count(DISTINCT product_id) AS keys,
    count(DISTINCT brand) AS brands_or_countries, count(DISTINCT category_code) AS categories_or_segments
FROM dim_product
GROUP BY date
UNION ALL
SELECT date AS day, 'user' AS dimension, count(*) AS rows, count(DISTINCT user_id) AS keys,
    count(DISTINCT country), count(DISTINCT segment)
FROM dim_user
GROUP BY date
ORDER BY day, dimension;
