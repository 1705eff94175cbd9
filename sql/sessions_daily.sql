-- Sessions per day of their start: how many, mean and longest duration, events per session,
-- converted sessions, conversion rate and revenue.
SELECT
    date AS day,
    count(*) AS sessions,
    round(avg(duration_ms) / 1000, 3) AS avg_duration_s,
    max(duration_ms) / 1000 AS max_duration_s,
    round(avg(views + carts + removals + purchases), 3) AS avg_events,
    count(*) FILTER (WHERE converted) AS converted_sessions,
    round(converted_sessions / sessions, 4) AS conversion_rate,
    round(sum(revenue), 2) AS revenue
FROM fact_sessions
GROUP BY day
ORDER BY day;
