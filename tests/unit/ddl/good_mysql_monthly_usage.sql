CREATE TABLE `api_monthly_usage` (
  `account_id` varchar(64) NOT NULL COMMENT 'customer account',
  `month` date NOT NULL COMMENT 'first day of the month',
  `billable_calls` bigint unsigned NOT NULL DEFAULT 0 COMMENT 'billable API calls',
  `overage_calls` bigint unsigned NOT NULL DEFAULT 0 COMMENT 'calls above the plan',
  PRIMARY KEY (`account_id`, `month`),
  KEY `by_month` (`month`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COMMENT='Per account per month billable API usage (invoicing)';
