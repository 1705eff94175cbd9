-- Alerts per day of detection, type and severity: how many and how many distinct subjects.
SELECT
    date AS day,
    alert_type,
    severity,
    count(*) AS alerts,
    count(DISTINCT subject_kind || ':' || subject_id) AS subjects
FROM fact_alerts
GROUP BY ALL
ORDER BY day, alert_type, severity;
