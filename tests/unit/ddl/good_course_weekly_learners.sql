-- A learning platform (not Sluice's): distinct learners per course per week, kept as
-- uniq states so weeks combine into months without double counting.
CREATE TABLE course_weekly_learners
(
    school_id   String COMMENT 'school (tenant) id',
    course_id   String COMMENT 'course id, unique within the school',
    week        Date COMMENT 'Monday of the UTC week',
    learners    AggregateFunction(uniq, String) COMMENT 'uniq state of the learner ids active that week',
    completions SimpleAggregateFunction(sum, UInt64) COMMENT 'lessons completed that week'
)
ENGINE = AggregatingMergeTree
ORDER BY (school_id, course_id, week)
COMMENT 'Per course per UTC week active learners and completions; aggregate analytics';

-- The materialized view writes into the table above; it stores nothing itself.
CREATE MATERIALIZED VIEW course_weekly_learners_mv TO course_weekly_learners AS
SELECT school_id, course_id, toMonday(completed_at) AS week,
       uniqState(learner_id) AS learners, count() AS completions
FROM lesson_completions
GROUP BY school_id, course_id, week;

-- An hourly grain through a truncating key is still an aggregate.
CREATE TABLE course_hourly_starts
(
    school_id  String COMMENT 'school (tenant) id',
    started_at DateTime COMMENT 'hour the lessons started (truncated by the key)',
    starts     UInt64 COMMENT 'lessons started in the hour'
)
ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/course_hourly_starts', '{replica}')
ORDER BY (school_id, toStartOfHour(started_at))
COMMENT 'Per school per UTC hour lesson starts';
