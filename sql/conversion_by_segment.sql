-- Session conversion by user device, by country and by segment (one row per attribute value):
-- sessions, converted sessions, conversion rate, revenue and mean duration.
SELECT
    CASE
        WHEN grouping(user_device) = 0 THEN 'device'
        WHEN grouping(user_country) = 0 THEN 'country'
        ELSE 'segment'
    END AS attribute,
    coalesce(user_device, user_country, user_segment) AS value,
    count(*) AS sessions,
    count(*) FILTER (WHERE converted) AS converted_sessions,
    round(converted_sessions / sessions, 4) AS conversion_rate,
    round(sum(revenue), 2) AS revenue,
    round(avg(duration_ms) / 1000, 3) AS avg_duration_s
FROM fact_sessions
GROUP BY GROUPING SETS ((user_device), (user_country), (user_segment))
ORDER BY attribute, value;
